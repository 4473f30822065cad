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

// clientTimeout bounds one crane or regctl command.
const clientTimeout = 5 * time.Minute

// Crane runs crane with --insecure (every peer here speaks plain HTTP) and an empty Docker
// config, so no credentials of the machine leak in, and returns its stdout with surrounding
// white space trimmed. A failing command fails the test with crane's stderr.
func Crane(t testing.TB, args ...string) string {
	t.Helper()

	return CraneEnv(t, nil, args...)
}

// CraneEnv runs crane like Crane with env added to its environment, for example
// "DOCKER_CONFIG=" + r.DockerConfig(t).
func CraneEnv(t testing.TB, env []string, args ...string) string {
	t.Helper()

	return runClient(t, "crane", env, append([]string{"--insecure"}, args...))
}

// Regctl runs regctl with an empty configuration and returns its stdout with surrounding white
// space trimmed. Plain-HTTP registries need a --host flag such as r.RegctlHost(); use
// (*Registry).Regctl to get it added. Unlike crane, regctl uploads large blobs in chunks.
func Regctl(t testing.TB, args ...string) string {
	t.Helper()

	return runClient(t, "regctl", nil, args)
}

// runClient runs a registry client tool with an isolated configuration and env added to its
// environment, and fails the test with the tool's stderr when it fails.
func runClient(t testing.TB, tool string, env []string, args []string) string {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()

	configDir := filepath.Join(t.TempDir(), tool+"-config")
	if err := os.MkdirAll(configDir, 0o700); err != nil {
		t.Fatalf("testpeer: %v", err)
	}

	cmd := exec.CommandContext(ctx, Tool(t, tool), args...)
	cmd.Env = append(os.Environ(),
		"DOCKER_CONFIG="+configDir,
		"REGCTL_CONFIG="+filepath.Join(configDir, "regctl.json"),
	)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testpeer: %s %s: %v\nstderr:\n%s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}
