package assemble

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/image"
)

// RequestOptions describes the push request that `img request` writes for image_push.
type RequestOptions struct {
	// Graph is the image's graph file, with paths relative to the execution root.
	Graph *image.Request
	// Strategy is one of image.Strategies.
	Strategy string
	// Registry, Repository and Tags are text/template templates over Vars.
	Registry   string
	Repository string
	Tags       []string
	// Vars are the template values: build settings and, when stamping, the keys of
	// Bazel's workspace status files.
	Vars map[string]string
	// RunfilesPaths maps execution-root paths to runfiles paths (Bazel's short_path)
	// for the request file and every blob file. Paths in the request are written
	// relative to the request's own runfiles directory, so they resolve in the
	// runfiles tree of the push target.
	RunfilesPaths map[string]string
	// RequestPath is the execution-root path of the request file.
	RequestPath string
}

// BuildRequest returns the push request with templates expanded and files chosen for
// the strategy. An eager request lists every blob. The other strategies read layers
// from the remote cache, so their requests list manifests, indexes and configs. Blobs
// from the source tree, such as a checked-in base layout, are always listed, because
// Bazel uploads only action outputs to a remote cache.
func BuildRequest(opts RequestOptions) (*image.Request, error) {
	if err := image.ValidateStrategy(opts.Strategy); err != nil {
		return nil, fmt.Errorf("strategy: %w", err)
	}

	dest, err := expandDestination(opts)
	if err != nil {
		return nil, err
	}

	requestRunfile, ok := opts.RunfilesPaths[opts.RequestPath]
	if !ok {
		return nil, fmt.Errorf("request file %s has no runfiles path; pass --runfile %s=SHORT_PATH", opts.RequestPath, opts.RequestPath)
	}
	metadata := metadataDigests(opts.Graph.Image)

	req := &image.Request{
		Strategy:     opts.Strategy,
		Image:        opts.Graph.Image,
		Files:        map[digest.Digest]string{},
		Destinations: []image.Destination{dest},
	}
	for d, execPath := range opts.Graph.Files {
		sourceFile := !strings.HasPrefix(execPath, "bazel-out/")
		if opts.Strategy != image.StrategyEager && !metadata[d] && !sourceFile {
			continue
		}
		runfile, ok := opts.RunfilesPaths[execPath]
		if !ok {
			return nil, fmt.Errorf("blob %s file %s has no runfiles path; pass --runfile %s=SHORT_PATH", d, execPath, execPath)
		}
		rel, err := filepath.Rel(path.Dir(requestRunfile), runfile)
		if err != nil {
			return nil, fmt.Errorf("blob %s file %s: %w", d, execPath, err)
		}
		req.Files[d] = filepath.ToSlash(rel)
	}
	return req, nil
}

// metadataDigests returns the digests of every manifest, index and config in img.
func metadataDigests(img *image.Image) map[digest.Digest]bool {
	found := map[digest.Digest]bool{}
	for d, m := range img.Manifests {
		found[d] = true
		if m.Config != nil {
			found[m.Config.Digest] = true
		}
	}
	return found
}

func expandDestination(opts RequestOptions) (image.Destination, error) {
	var dest image.Destination
	var err error
	if dest.Registry, err = expandTemplate("registry", opts.Registry, opts.Vars); err != nil {
		return dest, err
	}
	if dest.Registry == "" {
		return dest, fmt.Errorf("registry is empty; set image_push's registry attribute")
	}
	if dest.Repository, err = expandTemplate("repository", opts.Repository, opts.Vars); err != nil {
		return dest, err
	}
	if err := image.ValidateRepository(dest.Repository); err != nil {
		return dest, fmt.Errorf("repository %q (from %q): %w", dest.Repository, opts.Repository, err)
	}
	for i, tagTemplate := range opts.Tags {
		tag, err := expandTemplate(fmt.Sprintf("tag %d", i+1), tagTemplate, opts.Vars)
		if err != nil {
			return dest, err
		}
		if err := image.ValidateTag(tag); err != nil {
			return dest, fmt.Errorf("tag %q (from %q): %w", tag, tagTemplate, err)
		}
		dest.Tags = append(dest.Tags, tag)
	}
	return dest, nil
}

// expandTemplate runs text as a Go template over vars. A key that vars lacks is an
// error that lists the keys it has, never an empty or "<no value>" string.
func expandTemplate(field, text string, vars map[string]string) (string, error) {
	tmpl, err := template.New(field).Option("missingkey=error").Parse(text)
	if err != nil {
		return "", fmt.Errorf("%s template %q: %w", field, text, err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, vars); err != nil {
		return "", fmt.Errorf("%s template %q: %w; known keys: %s (workspace status keys are present only when stamping, with --stamp or stamp = \"enabled\", and keys beyond Bazel's own come from --workspace_status_command)", field, text, err, strings.Join(sortedKeys(vars), ", "))
	}
	return out.String(), nil
}

func sortedKeys(vars map[string]string) []string {
	keys := make([]string, 0, len(vars))
	for key := range vars {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return []string{"none"}
	}
	return keys
}

// ReadStatusFile parses a Bazel workspace status file (stable-status.txt or
// volatile-status.txt): one "KEY value" per line, the value running to the line's end.
func ReadStatusFile(path string, into map[string]string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("workspace status: %w", err)
	}
	defer f.Close()

	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, value, _ := strings.Cut(line, " ")
		into[key] = value
	}
	if err := scanner.Err(); err != nil {
		return fmt.Errorf("workspace status %s: %w", path, err)
	}
	return nil
}
