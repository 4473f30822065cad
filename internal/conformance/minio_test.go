package conformance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/rulesimg/img/internal/testpeer"
	s3store "github.com/rulesimg/img/registry/blobstore/s3"
)

// minioPackage is minio's main package in tools/go.mod. minio is AGPL, so it only ever runs as
// a separate server process and is never imported.
const minioPackage = "github.com/minio/minio"

// Test credentials of every minio the tests start; the AWS SDK in img registry reads them from
// the environment that setS3TestEnv sets.
const (
	minioUser     = "img-test"
	minioPassword = "img-test-secret"
)

var (
	minioBuildOnce sync.Once
	minioBuildErr  error
)

// minioBinary returns .tools/bin/minio, building it from tools/go.mod when it is missing. A
// cold build takes a few minutes; scripts/install-test-deps builds it ahead.
func minioBinary(t *testing.T) string {
	t.Helper()
	root := testpeer.RepoRoot(t)
	binary := filepath.Join(root, ".tools", "bin", "minio")
	minioBuildOnce.Do(func() {
		if info, err := os.Stat(binary); err == nil && info.Mode()&0o111 != 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		partial := fmt.Sprintf("%s.partial-%d", binary, os.Getpid())
		cmd := exec.CommandContext(ctx, "go", "build", "-o", partial, minioPackage)
		cmd.Dir = filepath.Join(root, "tools")
		if output, err := cmd.CombinedOutput(); err != nil {
			os.Remove(partial)
			minioBuildErr = fmt.Errorf("go build %s in tools: %w\n%s", minioPackage, err, output)
			return
		}
		minioBuildErr = os.Rename(partial, binary)
	})
	if minioBuildErr != nil {
		t.Fatalf("build minio: %v; build it by hand with `cd tools && go build -o ../.tools/bin/ %s`", minioBuildErr, minioPackage)
	}
	return binary
}

// minioServer is a minio process on 127.0.0.1 with its data in a temporary folder.
type minioServer struct {
	endpoint string
	logPath  string
}

// setS3TestEnv gives the AWS default chain (in this process and in img registry, which inherits
// the environment) the test credentials and nothing else: no shared config files and no
// instance metadata service.
func setS3TestEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", minioUser)
	t.Setenv("AWS_SECRET_ACCESS_KEY", minioPassword)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "no-aws-credentials"))
}

// startMinio starts minio on random loopback ports, waits for its health endpoint, and stops
// it when the test ends.
func startMinio(t *testing.T) *minioServer {
	t.Helper()
	setS3TestEnv(t)
	binary := minioBinary(t)
	dir := t.TempDir()
	port := testpeer.FreePort(t)
	consolePort := testpeer.FreePort(t)
	m := &minioServer{
		endpoint: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		logPath:  filepath.Join(dir, "minio.log"),
	}

	logFile, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "server", filepath.Join(dir, "data"),
		"--address", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		"--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(consolePort)),
		"--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+minioUser,
		"MINIO_ROOT_PASSWORD="+minioPassword,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CALLHOME_ENABLE=off",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start minio: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(m.endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m
			}
		}
		select {
		case <-done:
			t.Fatalf("minio exited during startup:\n%s", fileTail(m.logPath))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("minio did not become healthy within 60s:\n%s", fileTail(m.logPath))
		}
	}
}

// client returns an S3 client of the server, built the way img registry builds its own.
func (m *minioServer) client(t *testing.T) *awss3.Client {
	t.Helper()
	client, err := s3store.NewClient(context.Background(), s3store.ClientOptions{Endpoint: m.endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// createBucket creates a bucket and returns its name.
func createBucket(t *testing.T, client *awss3.Client, bucket string) string {
	t.Helper()
	if _, err := client.CreateBucket(context.Background(), &awss3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	return bucket
}

func fileTail(path string) string {
	content, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(content) > 4000 {
		content = content[len(content)-4000:]
	}
	return string(bytes.TrimSpace(content))
}
