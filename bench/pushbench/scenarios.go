package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
	"github.com/rulesimg/img/internal/testpeer"
)

// skopeoBlobInfoCache is the file in which skopeo 1.9, run as root, records which registry
// has which blob. It must not survive between cold runs.
const skopeoBlobInfoCache = "/var/lib/containers/cache/blob-info-cache-v1.boltdb"

// bench holds the settings and results of one benchmark run.
type bench struct {
	img       string // img binary
	tools     string // folder with registry, crane, regctl, bazel-remote
	work      string // scratch folder, deleted at the end unless -keep
	runs      int
	noopRuns  int
	clientLog string

	results []*scenario
}

// scenario is the record of one comparison: the commands run and every sample.
type scenario struct {
	title    string
	setup    []string
	commands map[string]string // tool name → example command line, ports of the last run
	order    []string          // tool names in report order
	samples  []benchkit.Sample
	ratios   []ratioTarget
	notes    []string
}

func (s *scenario) add(sample benchkit.Sample) {
	s.samples = append(s.samples, sample)
	fmt.Fprintf(os.Stderr, "pushbench: %-28s run %d: wall %6.2fs  cpu %6.2fs  rss %4d MiB  writes %5d MiB  server cpu %6.2fs\n",
		sample.Tool, sample.Run, sample.Wall.Seconds(), sample.CPU().Seconds(), sample.MaxRSS>>20, sample.WriteBytes>>20, sample.ServerCPU.Seconds())
}

func (s *scenario) of(tool string) []benchkit.Sample {
	return benchkit.SamplesOf(s.samples, tool)
}

func (b *bench) tool(name string) string {
	return filepath.Join(b.tools, name)
}

// eagerClient is one pushing tool of the cold eager comparison.
type eagerClient struct {
	name string
	// command prepares the tool's state for a cold push to reg (outside the timing) and
	// returns the push command.
	command func(b *bench, layout string, reg *benchkit.Registry) (benchkit.Command, error)
}

var eagerClients = []eagerClient{
	{"img push", func(b *bench, layout string, reg *benchkit.Registry) (benchkit.Command, error) {
		return benchkit.Command{Args: []string{b.img, "push", layout, reg.Addr + "/bench:latest"}}, nil
	}},
	{"crane push", func(b *bench, layout string, reg *benchkit.Registry) (benchkit.Command, error) {
		return benchkit.Command{Args: []string{b.tool("crane"), "push", layout, reg.Addr + "/bench:latest", "--insecure"}}, nil
	}},
	{"regctl image copy", func(b *bench, layout string, reg *benchkit.Registry) (benchkit.Command, error) {
		config := filepath.Join(b.work, "regctl", "config.json")
		if err := os.MkdirAll(filepath.Dir(config), 0o755); err != nil {
			return benchkit.Command{}, err
		}
		os.Remove(config)
		env := []string{"REGCTL_CONFIG=" + config}
		set := benchkit.Command{Args: []string{b.tool("regctl"), "registry", "set", "--tls", "disabled", reg.Addr}, Env: env, Log: b.clientLog}
		if _, err := benchkit.Measure(set); err != nil {
			return benchkit.Command{}, err
		}
		return benchkit.Command{Args: []string{b.tool("regctl"), "image", "copy", "ocidir://" + layout, reg.Addr + "/bench:latest"}, Env: env}, nil
	}},
	{"skopeo copy", func(b *bench, layout string, reg *benchkit.Registry) (benchkit.Command, error) {
		if err := os.Remove(skopeoBlobInfoCache); err != nil && !errors.Is(err, os.ErrNotExist) {
			return benchkit.Command{}, fmt.Errorf("clear skopeo's blob-info cache: %w", err)
		}
		return benchkit.Command{Args: []string{"skopeo", "copy", "--dest-tls-verify=false", "oci:" + layout, "docker://" + reg.Addr + "/bench:latest"}}, nil
	}},
}

// eager pushes a 1 GiB, 10-layer layout with each tool into a fresh registry per run.
func (b *bench) eager() error {
	s := &scenario{title: "Eager push, cold: 1 GiB in 10 layers into an empty registry", commands: map[string]string{}}
	b.results = append(b.results, s)

	layoutDir := filepath.Join(b.work, "eager-layout")
	start := time.Now()
	layout, err := benchkit.WriteLayout(layoutDir, 10, 1<<30, 1)
	if err != nil {
		return err
	}
	s.setup = append(s.setup, fmt.Sprintf("layout: %d blobs, %d bytes, written in %.1fs (Go program, testpeer.WriteLayout)",
		len(layout.Blobs), benchkit.BlobsSize(layout), time.Since(start).Seconds()))

	for _, client := range eagerClients {
		s.order = append(s.order, client.name)
	}
	s.ratios = []ratioTarget{
		{"wall", "img push", "crane push", wallTime, 1.0},
		{"client CPU", "img push", "crane push", benchkit.Sample.CPU, 1.2},
	}
	for run := 1; run <= b.runs; run++ {
		for i := range eagerClients {
			client := eagerClients[(run+i)%len(eagerClients)]
			if err := b.eagerRun(s, client, layout, run); err != nil {
				return fmt.Errorf("%s, run %d: %w", client.name, run, err)
			}
		}
	}
	return nil
}

func (b *bench) eagerRun(s *scenario, client eagerClient, layout testpeer.LayoutInfo, run int) error {
	reg, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "registry"))
	if err != nil {
		return err
	}
	defer reg.StopAndRemove()

	cmd, err := client.command(b, layout.Dir, reg)
	if err != nil {
		return err
	}
	cmd.Log = b.clientLog
	sample, err := benchkit.Measure(cmd, reg.PID())
	if err != nil {
		return err
	}
	sample.Tool, sample.Run = client.name, run
	s.add(sample)
	s.commands[client.name] = cmd.String()

	return b.checkPushed(s, reg, client.name, layout)
}

// checkPushed fails unless the registry has bench:latest, and notes a digest other than the
// layout's (a tool that rewrote the manifest).
func (b *bench) checkPushed(s *scenario, reg *benchkit.Registry, tool string, layout testpeer.LayoutInfo) error {
	got, err := reg.ManifestDigest("bench", "latest")
	if err != nil {
		return fmt.Errorf("push reported success, but: %w", err)
	}
	if got != layout.RootDigest().String() {
		note := fmt.Sprintf("%s stored manifest %s, not the layout's %s", tool, got, layout.RootDigest())
		for _, existing := range s.notes {
			if existing == note {
				return nil
			}
		}
		s.notes = append(s.notes, note)
	}
	return nil
}

// noop re-pushes a 100-layer image that the registry already has, with img and crane, to
// the tag it already has and to a new tag per run. With a new tag every blob and the
// manifest exist but the tag does not, so crane cannot stop after one manifest HEAD.
func (b *bench) noop() error {
	s := &scenario{title: "No-op re-push: 100 layers of 64 KiB, all in the registry", commands: map[string]string{}}
	b.results = append(b.results, s)
	s.order = []string{"img push", "crane push", "img push, new tag", "crane push, new tag"}
	s.ratios = []ratioTarget{
		{"wall", "img push", "crane push", wallTime, 0.5},
		{"wall", "img push, new tag", "crane push, new tag", wallTime, 0.5},
	}

	layout, err := benchkit.WriteLayout(filepath.Join(b.work, "noop-layout"), 100, 100*64<<10, 2)
	if err != nil {
		return err
	}
	reg, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "noop-registry"))
	if err != nil {
		return err
	}
	defer reg.StopAndRemove()

	pushCommand := func(tool, tag string) benchkit.Command {
		ref := reg.Addr + "/bench:" + tag
		if strings.HasPrefix(tool, "img") {
			return benchkit.Command{Args: []string{b.img, "push", layout.Dir, ref}, Log: b.clientLog}
		}
		return benchkit.Command{Args: []string{b.tool("crane"), "push", layout.Dir, ref, "--insecure"}, Log: b.clientLog}
	}

	if _, err := benchkit.Measure(pushCommand("crane push", "latest")); err != nil {
		return fmt.Errorf("first push: %w", err)
	}
	s.setup = append(s.setup, fmt.Sprintf("layout: %d blobs, %d bytes; pushed once with crane before the timed runs", len(layout.Blobs), benchkit.BlobsSize(layout)))

	for run := 1; run <= b.noopRuns; run++ {
		for i := range s.order {
			tool := s.order[(run+i)%len(s.order)]
			tag := "latest"
			if strings.HasSuffix(tool, "new tag") {
				tag = fmt.Sprintf("run%d-%s", run, strings.Fields(tool)[0])
			}
			cmd := pushCommand(tool, tag)
			sample, err := benchkit.Measure(cmd, reg.PID())
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", tool, run, err)
			}
			sample.Tool, sample.Run = tool, run
			s.add(sample)
			s.commands[tool] = cmd.String()
		}
	}
	return b.checkPushed(s, reg, "crane", layout)
}

// lazy compares img's lazy push from bazel-remote with downloading every blob to disk and
// pushing the layout with crane.
func (b *bench) lazy() error {
	s := &scenario{title: "Lazy push: 2 GiB in 10 layers from bazel-remote into an empty registry", commands: map[string]string{}}
	b.results = append(b.results, s)
	s.order = []string{"img push --strategy lazy", "naive: curl + crane push", "naive, step 1: curl", "naive, step 2: crane push"}
	s.ratios = []ratioTarget{{"wall", "img push --strategy lazy", "naive: curl + crane push", wallTime, 0.6}}

	start := time.Now()
	layout, err := benchkit.WriteLayout(filepath.Join(b.work, "lazy-layout"), 10, 2<<30, 3)
	if err != nil {
		return err
	}
	s.setup = append(s.setup, fmt.Sprintf("layout: %d blobs, %d bytes, written in %.1fs", len(layout.Blobs), benchkit.BlobsSize(layout), time.Since(start).Seconds()))

	cache, err := benchkit.StartBazelRemote(b.tool("bazel-remote"), filepath.Join(b.work, "bazel-remote"), 10)
	if err != nil {
		return err
	}
	defer func() {
		cache.Stop()
		os.RemoveAll(filepath.Join(b.work, "bazel-remote"))
	}()

	request := filepath.Join(b.work, "lazy-request.json")
	upload := benchkit.Command{Args: []string{b.img, "cas", "upload", layout.Dir, "--remote-cache", cache.Endpoint(), "--output", request}, Log: b.clientLog}
	sample, err := benchkit.Measure(upload, cache.PID())
	if err != nil {
		return fmt.Errorf("upload to the cache: %w", err)
	}
	s.setup = append(s.setup, fmt.Sprintf("`%s` took %.1fs (bazel-remote CPU %.1fs, it stores blobs zstd-compressed)",
		upload, sample.Wall.Seconds(), sample.ServerCPU.Seconds()))

	// img cas upload keeps the manifests and configs as local files in the request, as a
	// Bazel build without the bytes has them, and the layers only in the cache. Deleting the
	// layer files proves that the lazy push does not read them.
	if err := benchkit.RemoveLayers(layout); err != nil {
		return err
	}

	for run := 1; run <= b.runs; run++ {
		var err error
		if run%2 == 1 {
			err = b.lazyImg(s, cache, request, layout, run)
			if err == nil {
				err = b.lazyNaive(s, cache, layout, run)
			}
		} else {
			err = b.lazyNaive(s, cache, layout, run)
			if err == nil {
				err = b.lazyImg(s, cache, request, layout, run)
			}
		}
		if err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
	}
	return nil
}

func (b *bench) lazyImg(s *scenario, cache *benchkit.BazelRemote, request string, layout testpeer.LayoutInfo, run int) error {
	reg, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "registry"))
	if err != nil {
		return err
	}
	defer reg.StopAndRemove()

	cmd := benchkit.Command{
		Args: []string{b.img, "push", "--request", request, "--strategy", "lazy", "--remote-cache", cache.Endpoint(), reg.Addr + "/bench:latest"},
		Log:  b.clientLog,
	}
	sample, err := benchkit.Measure(cmd, reg.PID(), cache.PID())
	if err != nil {
		return err
	}
	sample.Tool, sample.Run = "img push --strategy lazy", run
	s.add(sample)
	s.commands[sample.Tool] = cmd.String()
	return b.checkPushed(s, reg, "img", layout)
}

// lazyNaive downloads every layer over bazel-remote's HTTP API, four at a time like img's
// default --jobs, into a new OCI layout with the local manifest and config, and pushes that
// with crane.
func (b *bench) lazyNaive(s *scenario, cache *benchkit.BazelRemote, layout testpeer.LayoutInfo, run int) error {
	reg, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "registry"))
	if err != nil {
		return err
	}
	defer reg.StopAndRemove()

	dir := filepath.Join(b.work, "naive-layout")
	defer os.RemoveAll(dir)
	if err := copyMetadata(layout, dir); err != nil {
		return err
	}

	curl := benchkit.Command{Args: []string{"curl", "--silent", "--show-error", "--fail", "--parallel", "--parallel-max", "4"}, Log: b.clientLog}
	for _, layer := range layout.Layers {
		path := filepath.Join(dir, "blobs", "sha256", layer.Digest.Encoded())
		curl.Args = append(curl.Args, "--output", path, "http://"+cache.HTTPAddr+"/cas/"+layer.Digest.Encoded())
	}
	download, err := benchkit.Measure(curl, cache.PID())
	if err != nil {
		return err
	}

	crane := benchkit.Command{Args: []string{b.tool("crane"), "push", dir, reg.Addr + "/bench:latest", "--insecure"}, Log: b.clientLog}
	push, err := benchkit.Measure(crane, reg.PID())
	if err != nil {
		return err
	}

	download.Tool, download.Run = "naive, step 1: curl", run
	push.Tool, push.Run = "naive, step 2: crane push", run
	total := benchkit.Sample{
		Tool:       "naive: curl + crane push",
		Run:        run,
		Wall:       download.Wall + push.Wall,
		User:       download.User + push.User,
		Sys:        download.Sys + push.Sys,
		MaxRSS:     max(download.MaxRSS, push.MaxRSS),
		WriteBytes: download.WriteBytes + push.WriteBytes,
		ServerCPU:  download.ServerCPU + push.ServerCPU,
	}
	s.add(download)
	s.add(push)
	s.add(total)
	s.commands["naive, step 1: curl"] = shorten(curl.String(), 10)
	s.commands["naive, step 2: crane push"] = crane.String()
	return b.checkPushed(s, reg, "crane", layout)
}

// shorten keeps the first n fields of a command line and elides the rest.
func shorten(line string, n int) string {
	fields := strings.Fields(line)
	if len(fields) <= n {
		return line
	}
	return strings.Join(fields[:n], " ") + " … (one --output FILE URL pair per layer)"
}

// copyMetadata copies everything but the layers of layout (oci-layout, index.json,
// manifests and configs) into dir, the part of a layout that a Bazel build without the
// bytes has locally.
func copyMetadata(layout testpeer.LayoutInfo, dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	paths := []string{"oci-layout", "index.json"}
	layers := map[string]bool{}
	for _, layer := range layout.Layers {
		layers[layer.Digest.String()] = true
	}
	for _, blob := range layout.Blobs {
		if !layers[blob.Digest.String()] {
			paths = append(paths, filepath.Join("blobs", "sha256", blob.Digest.Encoded()))
		}
	}
	for _, path := range paths {
		data, err := os.ReadFile(filepath.Join(layout.Dir, path))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, path), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
