// Command s3bench measures blob GET throughput through img registry's s3 store against minio
// on 127.0.0.1: streamed through the registry, redirected by the registry to a presigned URL
// (--s3-redirect), and a direct GET of the same object from minio with a presigned URL. The
// three are run interleaved, in a rotating order, and the report gives the median of each.
//
// Every GET is read by one Go HTTP client into io.Discard, so the numbers are transfer rates
// without the client's digest check. One untimed GET per way checks the digest first.
//
// bench/s3/run.sh builds img and this program and runs it; see docs/benchmarks.md.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/bench/internal/benchkit"
	s3store "github.com/rulesimg/img/registry/blobstore/s3"
)

// Credentials of the benchmark's own minio; nothing else accepts them.
const (
	minioUser     = "img-bench"
	minioPassword = "img-bench-secret"
	bucket        = "bench"
)

type options struct {
	img   string
	minio string
	size  int64
	runs  int
	work  string
	keep  bool
}

func main() {
	var opts options
	flag.StringVar(&opts.img, "img", "", "img binary to benchmark (required)")
	flag.StringVar(&opts.minio, "minio", ".tools/bin/minio", "minio binary")
	flag.Int64Var(&opts.size, "size", 1<<30, "blob size in bytes")
	flag.IntVar(&opts.runs, "runs", 5, "GETs per way of reading the blob")
	flag.StringVar(&opts.work, "work", "", "scratch folder for the blob, minio's data and the registries (default: a new folder in $TMPDIR; about 3 times -size at peak)")
	flag.BoolVar(&opts.keep, "keep", false, "keep the scratch folder and its logs")
	flag.Parse()

	if err := run(opts); err != nil {
		fmt.Fprintf(os.Stderr, "s3bench: %v\n", err)
		os.Exit(1)
	}
}

// way is one way of reading the blob: a URL to GET, following redirects.
type way struct {
	name    string
	url     string
	samples []time.Duration
}

func run(opts options) error {
	if opts.img == "" {
		return errors.New("-img is required: build img with go build -o DIR/img ./cmd/img and pass DIR/img")
	}
	if opts.runs < 1 || opts.size < 1 {
		return errors.New("-runs and -size must be positive")
	}
	if _, err := os.Stat(opts.minio); err != nil {
		return fmt.Errorf("minio binary %s: %w; run scripts/install-test-deps", opts.minio, err)
	}

	work := opts.work
	if work == "" {
		dir, err := os.MkdirTemp("", "s3bench-")
		if err != nil {
			return err
		}
		work = dir
	}
	if !opts.keep {
		defer os.RemoveAll(work)
	} else {
		fmt.Fprintf(os.Stderr, "s3bench: keeping %s\n", work)
	}

	// The AWS SDK in this process and in img registry reads these; nothing may fall back to a
	// real AWS account or the instance metadata service.
	for key, value := range map[string]string{
		"AWS_ACCESS_KEY_ID":           minioUser,
		"AWS_SECRET_ACCESS_KEY":       minioPassword,
		"AWS_REGION":                  "us-east-1",
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(work, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(work, "no-aws-credentials"),
	} {
		os.Setenv(key, value)
	}
	os.Unsetenv("AWS_PROFILE")
	os.Unsetenv("AWS_SESSION_TOKEN")

	minio, endpoint, err := startMinio(opts.minio, work)
	if err != nil {
		return err
	}
	defer minio.Stop()
	client, err := s3store.NewClient(context.Background(), s3store.ClientOptions{Endpoint: endpoint, PathStyle: true})
	if err != nil {
		return err
	}
	if _, err := client.CreateBucket(context.Background(), &awss3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}

	s3Args := []string{"--blob-store", "s3", "--s3-endpoint", endpoint, "--s3-bucket", bucket, "--s3-path-style"}
	streamed, streamedURL, err := startImgRegistry(opts.img, filepath.Join(work, "streamed"), s3Args)
	if err != nil {
		return err
	}
	defer streamed.Stop()
	redirected, redirectedURL, err := startImgRegistry(opts.img, filepath.Join(work, "redirected"), append(s3Args, "--s3-redirect"))
	if err != nil {
		return err
	}
	defer redirected.Stop()

	fmt.Fprintf(os.Stderr, "s3bench: writing and pushing a %d-byte blob\n", opts.size)
	dgst, pushTime, err := pushRandomBlob(streamedURL, filepath.Join(work, "blob"), opts.size)
	if err != nil {
		return err
	}
	os.Remove(filepath.Join(work, "blob"))

	key := "sha256/" + dgst.Encoded()
	presigned, err := awss3.NewPresignClient(client).PresignGetObject(context.Background(),
		&awss3.GetObjectInput{Bucket: aws.String(bucket), Key: &key}, awss3.WithPresignExpires(time.Hour))
	if err != nil {
		return err
	}
	blobPath := "/v2/bench/blob/blobs/" + dgst.String()
	ways := []*way{
		{name: "minio direct (presigned GET)", url: presigned.URL},
		{name: "img registry, streamed", url: streamedURL + blobPath},
		{name: "img registry, --s3-redirect", url: redirectedURL + blobPath},
	}

	// One untimed GET per way checks the bytes, so no timed run pays for hashing.
	for _, w := range ways {
		if _, err := measureGet(w.url, opts.size, dgst, true); err != nil {
			return fmt.Errorf("%s, digest check: %w", w.name, err)
		}
	}

	machine := describeMachine(opts.img)
	for i := range opts.runs {
		for j := range ways {
			w := ways[(i+j)%len(ways)]
			elapsed, err := measureGet(w.url, opts.size, dgst, false)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", w.name, i+1, err)
			}
			w.samples = append(w.samples, elapsed)
			fmt.Fprintf(os.Stderr, "s3bench: run %d %-30s %8.1f MiB/s\n", i+1, w.name, rate(opts.size, elapsed))
		}
	}

	writeReport(os.Stdout, machine, opts, ways)
	copyKind := "in one PutObject"
	if opts.size > s3store.DefaultPartSize {
		copyKind = "as a multipart upload"
	}
	fmt.Fprintf(os.Stdout, "\nThe one push of the blob took %.2f s: a monolithic POST from a local file, whose commit copied the staged upload to minio %s.\n",
		pushTime.Seconds(), copyKind)
	return nil
}

// measureGet GETs url, reads the body into io.Discard (hashing it when verify is set), and
// returns the wall time from request to the last byte.
func measureGet(url string, size int64, dgst digest.Digest, verify bool) (time.Duration, error) {
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var sink io.Writer = io.Discard
	hash := sha256.New()
	if verify {
		sink = hash
	}
	n, err := io.Copy(sink, resp.Body)
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("GET %s returned %d bytes, want %d", url, n, size)
	}
	if verify {
		if got := digest.NewDigest(digest.SHA256, hash); got != dgst {
			return 0, fmt.Errorf("GET %s returned bytes with digest %s, want %s", url, got, dgst)
		}
	}
	return elapsed, nil
}

// pushRandomBlob writes size random bytes to path and pushes them to the registry at base in one
// monolithic upload, streamed from the file. It returns the blob's digest and the push's wall
// time.
func pushRandomBlob(base, path string, size int64) (digest.Digest, time.Duration, error) {
	file, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	defer file.Close()
	hash := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(file, hash), rand.Reader, size); err != nil {
		return "", 0, err
	}
	dgst := digest.NewDigest(digest.SHA256, hash)
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return "", 0, err
	}

	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, base+"/v2/bench/blob/blobs/uploads/?digest="+dgst.String(), file)
	if err != nil {
		return "", 0, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("push blob: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", 0, fmt.Errorf("push blob: %s: %s", resp.Status, body)
	}
	return dgst, time.Since(start), nil
}

func rate(size int64, elapsed time.Duration) float64 {
	return float64(size) / (1 << 20) / elapsed.Seconds()
}

func median(samples []time.Duration) time.Duration {
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	middle := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[middle]
	}
	return (sorted[middle-1] + sorted[middle]) / 2
}

func writeReport(w io.Writer, machine []string, opts options, ways []*way) {
	fmt.Fprintf(w, "Blob of %d bytes (%.0f MiB), %d GETs per way, interleaved in a rotating order.\n\n", opts.size, float64(opts.size)/(1<<20), opts.runs)
	for _, line := range machine {
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| way | median time | median MiB/s | slowest | fastest | vs. minio direct |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	direct := median(ways[0].samples)
	for _, wy := range ways {
		m := median(wy.samples)
		fmt.Fprintf(w, "| %s | %.2f s | %.0f | %.0f MiB/s | %.0f MiB/s | %.2f× time |\n",
			wy.name, m.Seconds(), rate(opts.size, m),
			rate(opts.size, slices.Max(wy.samples)), rate(opts.size, slices.Min(wy.samples)),
			m.Seconds()/direct.Seconds())
	}
}

// describeMachine returns Markdown lines on the machine and the versions involved.
func describeMachine(img string) []string {
	cpuModel := "unknown"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if value, ok := strings.CutPrefix(line, "model name"); ok {
				cpuModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(value), ":"))
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	loadFields := strings.Fields(string(load))
	if len(loadFields) > 3 {
		loadFields = loadFields[:3]
	}
	imgVersion, _ := exec.Command(img, "version").CombinedOutput()
	return []string{
		"- date: " + time.Now().UTC().Format("2006-01-02 15:04 MST"),
		fmt.Sprintf("- machine: %d CPUs (%s)", runtime.NumCPU(), cpuModel),
		"- load average (1, 5, 15 min) at the start: " + strings.Join(loadFields, " "),
		"- Go: " + runtime.Version(),
		"- img: " + strings.TrimSpace(strings.SplitN(string(imgVersion), "\n", 2)[0]),
		"- minio: the version pinned in tools/go.mod, one server with one data folder",
	}
}

func startMinio(binary, work string) (*benchkit.Server, string, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	consolePort, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	address := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	endpoint := "http://" + address
	args := []string{"server", filepath.Join(work, "minio-data"), "--address", address,
		"--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(consolePort)), "--quiet"}
	env := []string{"MINIO_ROOT_USER=" + minioUser, "MINIO_ROOT_PASSWORD=" + minioPassword,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CALLHOME_ENABLE=off"}
	p, err := benchkit.StartServer("minio", filepath.Join(work, "minio.log"), binary, args, env, benchkit.HTTPAnswers(endpoint+"/minio/health/live"))
	return p, endpoint, err
}

func startImgRegistry(binary, dataDir string, storeArgs []string) (*benchkit.Server, string, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	base := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := append([]string{"registry", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--data-dir", dataDir}, storeArgs...)
	p, err := benchkit.StartServer("img registry", dataDir+".log", binary, args, nil, benchkit.HTTPAnswers(base+"/healthz"))
	return p, base, err
}
