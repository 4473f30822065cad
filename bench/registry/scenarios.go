package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
	"github.com/rulesimg/img/internal/testpeer"
)

// bench holds the settings and results of one benchmark run.
type bench struct {
	img         string // img binary
	self        string // this program, run as the fetch clients
	tools       string // folder with registry, crane, bazel-remote
	work        string // scratch folder, deleted at the end unless -keep
	runs        int
	largeCAS    int64
	besRate     float64
	besDuration time.Duration
	besStream   string
	tmpfs       string
	besArgs     string
	clientLog   string

	cache   *benchkit.BazelRemote
	getBlob *casImage // the 1 GiB one-layer image in the cache, shared by get and bes

	results []*scenario
}

// scenario is the record of one comparison: the commands run and every sample.
type scenario struct {
	title    string
	setup    []string
	commands map[string]string // client name → example command line, ports of the last run
	order    []string          // client names in report order
	samples  []benchkit.Sample
	ratios   []ratioTarget
	notes    []string
	limits   []limitTarget
	// extra is Markdown printed after the tables, for results that are no samples.
	extra []string
}

func newScenario(title string, order ...string) *scenario {
	return &scenario{title: title, commands: map[string]string{}, order: order}
}

func (s *scenario) add(sample benchkit.Sample) {
	s.samples = append(s.samples, sample)
	fmt.Fprintf(os.Stderr, "registrybench: %-36s run %d: wall %7.3fs  server cpu %6.2fs  server peak rss %5d MiB\n",
		sample.Tool, sample.Run, sample.Wall.Seconds(), sample.ServerCPU.Seconds(), sample.ServerPeakRSS>>20)
}

func (s *scenario) of(tool string) []benchkit.Sample {
	return benchkit.SamplesOf(s.samples, tool)
}

func (b *bench) tool(name string) string {
	return filepath.Join(b.tools, name)
}

// run measures c as run number run of tool and adds the sample to s.
func (b *bench) run(s *scenario, tool string, run int, c benchkit.Command, bytes int64, servers ...int) error {
	c.Log = b.clientLog
	sample, err := benchkit.Measure(c, servers...)
	if err != nil {
		return fmt.Errorf("%s, run %d: %w", tool, run, err)
	}
	sample.Tool, sample.Run, sample.Bytes = tool, run, bytes
	s.commands[tool] = strings.ReplaceAll(c.String(), b.work, "$WORK")
	s.add(sample)
	return nil
}

// once runs a setup command outside any comparison and returns its wall time.
func (b *bench) once(args ...string) (time.Duration, error) {
	sample, err := benchkit.Measure(benchkit.Command{Args: args, Log: b.clientLog})
	return sample.Wall, err
}

// checkManifest fails unless addr serves bench:latest with the layout's root digest.
func checkManifest(addr string, layout testpeer.LayoutInfo) error {
	req, err := http.NewRequest(http.MethodHead, "http://"+addr+"/v2/bench/manifests/latest", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", layout.Root.MediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HEAD %s/v2/bench/manifests/latest after the push: HTTP %d", addr, resp.StatusCode)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != layout.RootDigest().String() {
		return fmt.Errorf("HEAD %s/v2/bench/manifests/latest after the push: digest %s, expected %s", addr, got, layout.RootDigest())
	}
	return nil
}

// remoteCache returns the shared bazel-remote, started on first use with room for the
// large cas_registry image.
func (b *bench) remoteCache() (*benchkit.BazelRemote, error) {
	if b.cache != nil {
		return b.cache, nil
	}
	maxGiB := int(b.largeCAS>>30) + 4
	cache, err := benchkit.StartBazelRemote(b.tool("bazel-remote"), filepath.Join(b.work, "bazel-remote"), maxGiB)
	if err != nil {
		return nil, err
	}
	b.cache = cache
	return cache, nil
}

func (b *bench) stopCache() {
	if b.cache != nil {
		b.cache.Stop()
		b.cache = nil
	}
}

// casImage is a layout whose blobs were uploaded to the cache with img cas upload.
type casImage struct {
	layout  testpeer.LayoutInfo
	request string // push request file written by img cas upload
}

// uploadImage writes a layout of layers random layers of total bytes under name, uploads
// it to the cache with img cas upload (strategy cas_registry in the push request) and
// returns it with setup notes.
func (b *bench) uploadImage(name string, layers int, total int64, seed uint64) (*casImage, []string, error) {
	cache, err := b.remoteCache()
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	layout, err := benchkit.WriteLayout(filepath.Join(b.work, name+"-layout"), layers, total, seed)
	if err != nil {
		return nil, nil, err
	}
	notes := []string{fmt.Sprintf("%s layout: %d blobs, %d bytes, written in %.1fs", name, len(layout.Blobs), benchkit.BlobsSize(layout), time.Since(start).Seconds())}

	image := &casImage{layout: layout, request: filepath.Join(b.work, name+"-request.json")}
	cacheCPU := benchkit.ProcessCPU([]int{cache.PID()})
	// The destination is a placeholder: every push replaces the registry with --registry.
	wall, err := b.once(b.img, "cas", "upload", layout.Dir, "127.0.0.1:5000/bench:latest",
		"--remote-cache", cache.Endpoint(), "--strategy", "cas_registry", "--output", image.request)
	if err != nil {
		return nil, nil, err
	}
	notes = append(notes, fmt.Sprintf("`$BIN/img cas upload $WORK/%s-layout 127.0.0.1:5000/bench:latest --remote-cache grpc://… --strategy cas_registry --output $WORK/%s-request.json` took %.1fs (bazel-remote CPU %.1fs)",
		name, name, wall.Seconds(), (benchkit.ProcessCPU([]int{cache.PID()})-cacheCPU).Seconds()))
	return image, notes, nil
}

// casRegistry starts img registry with the remote cache store and the blob-cache service.
func (b *bench) casRegistry(dir string) (*benchkit.Registry, error) {
	return benchkit.StartImgRegistry(b.img, dir, true, "--blob-store", "reapi", "--reapi-endpoint", b.cache.Endpoint())
}

// casPushCommand is img push of image into reg with the cas_registry strategy.
func (b *bench) casPushCommand(image *casImage, reg *benchkit.Registry) benchkit.Command {
	return benchkit.Command{Args: []string{b.img, "push", "--request", image.request, "--strategy", "cas_registry",
		"--blob-cache", reg.BlobCache, "--registry", reg.Addr, "--quiet"}}
}
