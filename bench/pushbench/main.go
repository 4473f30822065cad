// Command pushbench compares img push with crane, regctl and skopeo on 127.0.0.1: a cold
// eager push, a no-op re-push and a lazy push from bazel-remote against downloading the
// blobs and pushing them with crane. Each client runs as its own process, interleaved
// with the others, and pushbench records its wall time, CPU time, peak RSS and disk
// writes. It prints a Markdown report with medians on stdout and progress on stderr.
//
// bench/run.sh builds img and runs this program; see docs/benchmarks.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

func main() {
	var b bench
	var scenarios string
	var keep bool
	flag.StringVar(&b.img, "img", "", "img binary to benchmark (required)")
	flag.StringVar(&b.tools, "tools", ".tools/bin", "folder with the registry, crane, regctl and bazel-remote binaries")
	flag.IntVar(&b.runs, "runs", 5, "runs per client of the eager and lazy comparisons")
	flag.IntVar(&b.noopRuns, "noop-runs", 11, "runs per client of the no-op re-push comparison")
	flag.StringVar(&scenarios, "scenarios", "eager,noop,lazy", "comma-separated comparisons to run: eager, noop, lazy")
	flag.StringVar(&b.work, "work", "", "scratch folder for layouts, registries and the cache (default: a new folder in $TMPDIR, about 6 GiB at peak)")
	flag.BoolVar(&keep, "keep", false, "keep the scratch folder: the layouts and the log of every client command (registries and the cache are deleted after use)")
	flag.Parse()

	if err := run(&b, strings.Split(scenarios, ","), keep); err != nil {
		fmt.Fprintf(os.Stderr, "pushbench: %v\n", err)
		os.Exit(1)
	}
}

func run(b *bench, scenarios []string, keep bool) error {
	if b.img == "" {
		return fmt.Errorf("-img is required: build img with go build -o DIR/img ./cmd/img and pass DIR/img")
	}
	for _, name := range scenarios {
		if !slices.Contains([]string{"eager", "noop", "lazy"}, name) {
			return fmt.Errorf("-scenarios: unknown comparison %q; use eager, noop or lazy", name)
		}
	}
	var err error
	if b.img, err = filepath.Abs(b.img); err != nil {
		return err
	}
	if b.tools, err = filepath.Abs(b.tools); err != nil {
		return err
	}
	for _, name := range []string{"registry", "crane", "regctl", "bazel-remote"} {
		if _, err := os.Stat(b.tool(name)); err != nil {
			return fmt.Errorf("%s missing in %s; run scripts/install-test-deps", name, b.tools)
		}
	}
	for _, name := range []string{"skopeo", "curl"} {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Errorf("%s not found on PATH; install it (apt-get install %s)", name, name)
		}
	}

	if b.work == "" {
		if b.work, err = os.MkdirTemp("", "pushbench-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	if keep {
		fmt.Fprintf(os.Stderr, "pushbench: scratch folder %s is kept\n", b.work)
	} else {
		defer os.RemoveAll(b.work)
	}
	b.clientLog = filepath.Join(b.work, "clients.log")

	machine := describeMachine(b)
	steps := map[string]func() error{"eager": b.eager, "noop": b.noop, "lazy": b.lazy}
	for _, name := range scenarios {
		if err := steps[name](); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}

	machine = append(machine, "- load average (1, 5, 15 min) at the end: "+benchkit.LoadAverage())
	writeReport(os.Stdout, machine, b.results)
	return nil
}
