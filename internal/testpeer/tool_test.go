package testpeer

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestBuildToolParallelBuildsOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a tool with go build")
	}
	root := RepoRoot(t)
	binDir := filepath.Join(t.TempDir(), "bin")

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = buildTool(root, binDir, "protoc-gen-go", toolPackages["protoc-gen-go"])
		}()
	}
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Errorf("buildTool call %d: %v", i, err)
		}
	}
	if !isExecutable(filepath.Join(binDir, "protoc-gen-go")) {
		t.Errorf("%s/protoc-gen-go is not an executable file", binDir)
	}
	leftovers, err := filepath.Glob(filepath.Join(binDir, "*.partial-*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(leftovers) != 0 {
		t.Errorf("partial binaries left behind: %v", leftovers)
	}
}

func TestBuildToolReportsFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	root := RepoRoot(t)
	binDir := filepath.Join(t.TempDir(), "bin")

	err := buildTool(root, binDir, "missing", "example.com/not/in/tools/go.mod")

	if err == nil {
		t.Fatalf("buildTool of a package outside tools/go.mod succeeded, want an error")
	}
	if _, statErr := os.Stat(filepath.Join(binDir, "missing")); !os.IsNotExist(statErr) {
		t.Errorf("failed build left %s/missing behind (stat error %v)", binDir, statErr)
	}
}
