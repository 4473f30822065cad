// Package conformance runs `img registry` as a user would: the OCI distribution-spec
// conformance suite, a crash during pushes, and pulls with crane and skopeo.
package conformance

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rulesimg/img/internal/testpeer"
)

// conformanceEnv turns on every API and data set of the pinned suite
// (github.com/opencontainers/distribution-spec/conformance in tools/go.mod), including the
// optional ones the registry implements: upload cancel, digest headers, ?tag= parameters,
// referrers and sha512. Sparse manifests stay off because the registry rejects manifests whose
// blobs were not pushed.
func conformanceEnv(host, resultsDir string) []string {
	return []string{
		"OCI_REGISTRY=" + host,
		"OCI_TLS=disabled",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_RESULTS_DIR=" + resultsDir,
		"OCI_VERSION=1.1",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=true",
		"OCI_API_BLOBS_ATOMIC=true",
		"OCI_API_BLOBS_DELETE=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_MANIFESTS_ATOMIC=true",
		"OCI_API_MANIFESTS_DELETE=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_TAGS_ATOMIC=true",
		"OCI_API_TAGS_DELETE=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=true",
		"OCI_DATA_IMAGE=true",
		"OCI_DATA_INDEX=true",
		"OCI_DATA_INDEX_LIST=true",
		"OCI_DATA_SPARSE=false",
		"OCI_DATA_ARTIFACT=true",
		"OCI_DATA_SUBJECT=true",
		"OCI_DATA_SUBJECT_MISSING=true",
		"OCI_DATA_ARTIFACT_LIST=true",
		"OCI_DATA_SUBJECT_LIST=true",
		"OCI_DATA_DATA_FIELD=true",
		"OCI_DATA_NONDISTRIBUTABLE=true",
		"OCI_DATA_CUSTOM_FIELDS=true",
		"OCI_DATA_NO_LAYERS=true",
		"OCI_DATA_EMPTY_BLOB=true",
		"OCI_DATA_SHA512=true",
	}
}

type junitReport struct {
	Suites []struct {
		Cases []struct {
			Name   string `xml:"name,attr"`
			Status string `xml:"status,attr"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// runConformance runs the suite against host and fails the test with the names of failed cases.
func runConformance(t *testing.T, host string) {
	t.Helper()
	resultsDir := t.TempDir()
	cmd := exec.Command(testpeer.Tool(t, "conformance"))
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), conformanceEnv(host, resultsDir)...)
	start := time.Now()
	output, runErr := cmd.CombinedOutput()
	t.Logf("conformance suite ran for %s", time.Since(start).Round(time.Millisecond))

	content, err := os.ReadFile(filepath.Join(resultsDir, "junit.xml"))
	if err != nil {
		t.Fatalf("conformance suite wrote no junit.xml (exit: %v): %v\n%s", runErr, err, output)
	}
	var report junitReport
	if err := xml.Unmarshal(content, &report); err != nil {
		t.Fatalf("parse junit.xml: %v", err)
	}

	counts := map[string]int{}
	var failed []string
	for _, suite := range report.Suites {
		for _, tc := range suite.Cases {
			counts[tc.Status]++
			if tc.Status == "failure" || tc.Status == "error" {
				failed = append(failed, tc.Name)
			}
		}
	}
	t.Logf("conformance results: %d passed, %d failed, %d errors, %d skipped",
		counts["passed"], counts["failure"], counts["error"], counts["skipped"])

	if counts["passed"] == 0 {
		t.Fatalf("conformance suite passed no test (exit: %v)\n%s", runErr, output)
	}
	if len(failed) > 0 {
		t.Errorf("%d conformance tests failed:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	if runErr != nil && len(failed) == 0 {
		t.Errorf("conformance suite exited with %v but reported no failed test\n%s", runErr, output)
	}
}

func TestConformanceFilesystemStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts img registry and runs the OCI conformance suite")
	}
	registry := startImgRegistry(t, t.TempDir())
	runConformance(t, registry.host())
}
