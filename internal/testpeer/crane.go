package testpeer

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// craneTimeout bounds one crane command.
const craneTimeout = 5 * time.Minute

// Crane runs crane with --insecure (every peer here speaks plain HTTP) and an empty Docker
// config, so no credentials of the machine leak in, and returns its stdout with surrounding
// white space trimmed. A failing command fails the test with crane's stderr.
func Crane(t testing.TB, args ...string) string {
	t.Helper()

	return CraneEnv(t, nil, args...)
}

// CraneEnv runs crane like Crane with env added to its environment, for example
// "DOCKER_CONFIG=" + r.DockerConfig(t). Without a DOCKER_CONFIG entry in env, crane gets an
// empty Docker config folder.
func CraneEnv(t testing.TB, env []string, args ...string) string {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), craneTimeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, Tool(t, "crane"), append([]string{"--insecure"}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+emptyDockerConfig(t))
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testpeer: crane %s: %v\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

func emptyDockerConfig(t testing.TB) string {
	t.Helper()

	dir := filepath.Join(t.TempDir(), "empty-docker-config")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("testpeer: %v", err)
	}
	return dir
}
