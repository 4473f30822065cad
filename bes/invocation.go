package bes

import (
	"strings"
	"sync"
	"time"

	bep "github.com/rulesimg/img/proto/buildeventstream"
)

// invocation is the server's state of one Bazel invocation while its event stream is
// open. Bazel sends a NamedSetOfFiles or TargetConfigured event once and refers to it
// later, and a retried stream resends only the events not yet acknowledged, so this
// state outlives a single stream RPC.
//
// The state lives in memory and, when the server has an EventState, also on disk, so
// that a server restarted in the middle of a build can still resolve the file sets
// and target kinds that the previous process acknowledged.
type invocation struct {
	id string

	// mu serializes the events of one invocation: Bazel sends them on one stream, but a
	// retried stream can overlap the dying one.
	mu sync.Mutex

	// lastSequence is the highest processed sequence number per stream component; an
	// event at or below it is a replay.
	lastSequence map[int32]int64
	// unstored maps each handled event to its job writes until they end.
	unstored map[eventKey]*jobWrites
	kinds    map[string]string
	// namedSets holds only the sets that newNamedSet keeps something of.
	namedSets map[string]NamedSetRecord

	started      time.Time
	lastEvent    time.Time
	command      string
	bazelVersion string
	finished     bool
	exitCode     string
	streamDone   bool
}

func newInvocation(id string) *invocation {
	return &invocation{
		id:           id,
		lastSequence: map[int32]int64{},
		unstored:     map[eventKey]*jobWrites{},
		kinds:        map[string]string{},
		namedSets:    map[string]NamedSetRecord{},
		lastEvent:    time.Now(),
	}
}

// newNamedSet keeps the part of a NamedSetOfFiles event that can lead to a push
// request: its JSON files and its nested sets. Other files, such as layers and
// binaries, are dropped when the event arrives, because a large build reports millions.
func newNamedSet(event *bep.NamedSetOfFiles) NamedSetRecord {
	var set NamedSetRecord
	for _, file := range event.GetFiles() {
		if !strings.HasSuffix(file.GetName(), ".json") {
			continue
		}
		set.Files = append(set.Files, FileRecord{Name: fileKey(file), URI: file.GetUri(), Contents: file.GetContents()})
	}
	for _, nested := range event.GetFileSets() {
		set.Nested = append(set.Nested, nested.GetId())
	}
	return set
}

// resolveFiles returns the files of the named sets ids and all sets nested in them,
// each file once, and the ids of sets that were never received or kept nothing.
func (inv *invocation) resolveFiles(ids []*bep.BuildEventId_NamedSetOfFilesId) ([]FileRecord, []string) {
	var files []FileRecord
	var missing []string
	seenSets := map[string]bool{}
	seenFiles := map[string]bool{}

	stack := make([]string, 0, len(ids))
	for i := len(ids) - 1; i >= 0; i-- {
		stack = append(stack, ids[i].GetId())
	}

	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seenSets[id] {
			continue
		}
		seenSets[id] = true

		set, ok := inv.namedSets[id]
		if !ok {
			missing = append(missing, id)
			continue
		}

		for _, file := range set.Files {
			if seenFiles[file.Name] {
				continue
			}
			seenFiles[file.Name] = true
			files = append(files, file)
		}
		for i := len(set.Nested) - 1; i >= 0; i-- {
			stack = append(stack, set.Nested[i])
		}
	}
	return files, missing
}

// fileKey is a file's path below the execution root, for example
// bazel-out/k8-fastbuild/bin/app/push.push_request.json.
func fileKey(file *bep.File) string {
	parts := append(append([]string{}, file.GetPathPrefix()...), file.GetName())
	return strings.Join(parts, "/")
}
