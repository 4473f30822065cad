// Command registrybench measures `img registry`, cas_registry pushes and `img bes` against
// the CNCF distribution registry and bazel-remote. The comparisons are crane push
// throughput, blob GET throughput from the remote cache store, and the registry's peak RSS
// during a 2 GiB upload. It also times cas_registry pushes of a small and a large image and
// the Build Event Service's acknowledgement latency at a fixed event rate. Every server binds 127.0.0.1 on
// a free port. Runs are interleaved, and the Markdown report on stdout gives medians.
// Progress goes to stderr.
//
// bench/registry/run.sh builds img and runs this program; see docs/benchmarks.md.
//
// Two subcommands are the measured clients of the GET comparison, each run as its own
// process: "fetch-http URL HASH" downloads a blob over HTTP and checks its SHA-256, and
// "fetch-cas ENDPOINT HASH SIZE" reads it from the remote cache through ByteStream.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

var allScenarios = []string{"push", "get", "rss", "cas", "bes"}

func main() {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "fetch-") {
		os.Exit(runFetch(os.Args[1], os.Args[2:]))
	}

	var b bench
	var scenarios string
	var keep bool
	flag.StringVar(&b.img, "img", "", "img binary to benchmark (required)")
	flag.StringVar(&b.tools, "tools", ".tools/bin", "folder with the registry, crane and bazel-remote binaries")
	flag.IntVar(&b.runs, "runs", 5, "runs per client of each comparison")
	flag.Int64Var(&b.largeCAS, "cas-large-bytes", 10<<30, "size in bytes of the large image of the cas_registry comparison")
	flag.Float64Var(&b.besRate, "bes-rate", 5000, "build events per second that the BES load client sends")
	flag.DurationVar(&b.besDuration, "bes-duration", 0, "length of each BES load phase (default 20s)")
	flag.StringVar(&b.besArgs, "bes-args", "", "extra arguments for img bes, separated by spaces, for example -bes-args=--job-sync-interval=100ms")
	flag.StringVar(&b.tmpfs, "tmpfs", "/dev/shm", "tmpfs folder for the storage of the registry that stands in for a registry on another machine in the BES comparison")
	flag.StringVar(&b.besStream, "bes-stream", "bes/testdata/bazel-4.2.3-build.binpb", "captured Bazel event stream that the BES load client replays")
	flag.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "comma-separated comparisons to run: "+strings.Join(allScenarios, ", "))
	flag.StringVar(&b.work, "work", "", "scratch folder for layouts, registries and the cache (default: a new folder in $TMPDIR, about 24 GiB at peak with the default sizes)")
	flag.BoolVar(&keep, "keep", false, "keep the scratch folder with the log of every client and server")
	flag.Parse()

	if err := run(&b, strings.Split(scenarios, ","), keep); err != nil {
		fmt.Fprintf(os.Stderr, "registrybench: %v\n", err)
		os.Exit(1)
	}
}

func runFetch(name string, args []string) int {
	var n int64
	var err error
	switch {
	case name == "fetch-http" && len(args) == 2:
		n, err = fetchHTTP(args[0], args[1])
	case name == "fetch-cas" && len(args) == 3:
		n, err = fetchCAS(args[0], args[1], args[2])
	default:
		err = fmt.Errorf("usage: registrybench fetch-http URL HASH | fetch-cas ENDPOINT HASH SIZE")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "registrybench %s: %v\n", name, err)
		return 1
	}
	fmt.Printf("%d bytes\n", n)
	return 0
}

func run(b *bench, scenarios []string, keep bool) error {
	if b.img == "" {
		return fmt.Errorf("-img is required: build img with go build -o DIR/img ./cmd/img and pass DIR/img")
	}
	for _, name := range scenarios {
		if !slices.Contains(allScenarios, name) {
			return fmt.Errorf("-scenarios: unknown comparison %q; use %s", name, strings.Join(allScenarios, ", "))
		}
	}
	var err error
	if b.img, err = filepath.Abs(b.img); err != nil {
		return err
	}
	if b.tools, err = filepath.Abs(b.tools); err != nil {
		return err
	}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	for _, name := range []string{"registry", "crane", "bazel-remote"} {
		if _, err := os.Stat(b.tool(name)); err != nil {
			return fmt.Errorf("%s missing in %s; run scripts/install-test-deps", name, b.tools)
		}
	}

	if b.work == "" {
		if b.work, err = os.MkdirTemp("", "registrybench-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	if keep {
		fmt.Fprintf(os.Stderr, "registrybench: scratch folder %s is kept\n", b.work)
	} else {
		defer os.RemoveAll(b.work)
	}
	b.clientLog = filepath.Join(b.work, "clients.log")

	defer b.stopCache()
	machine := describeMachine(b)
	runners := map[string]func() error{"push": b.push, "get": b.get, "rss": b.uploadRSS, "cas": b.casPush, "bes": b.besLoad}
	for _, name := range allScenarios {
		if !slices.Contains(scenarios, name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "registrybench: %s\n", name)
		if err := runners[name](); err != nil {
			writeReport(os.Stdout, machine, b.results)
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	machine = append(machine, "- load average (1, 5, 15 min) at the end: "+benchkit.LoadAverage())
	writeReport(os.Stdout, machine, b.results)
	return nil
}
