package benchkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMeasureLogsCommandAndOutput(t *testing.T) {
	log := filepath.Join(t.TempDir(), "clients.log")

	sample, err := Measure(Command{Args: []string{"sh", "-c", "echo client output"}, Log: log}, os.Getpid())
	if err != nil {
		t.Fatalf("Measure: %v", err)
	}
	if sample.Wall <= 0 {
		t.Errorf("Wall = %v, expected more than 0", sample.Wall)
	}
	if sample.MaxRSS <= 0 {
		t.Errorf("MaxRSS = %d, expected more than 0", sample.MaxRSS)
	}
	if sample.ServerPeakRSS <= 0 {
		t.Errorf("ServerPeakRSS = %d, expected the test process's VmHWM", sample.ServerPeakRSS)
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "$ sh -c echo client output\n") {
		t.Errorf("log %q lacks the command line", data)
	}
	if !strings.Contains(string(data), "client output\n") {
		t.Errorf("log %q lacks the client's output", data)
	}
}

func TestMeasureFailedClientShowsLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "clients.log")

	_, err := Measure(Command{Args: []string{"sh", "-c", "echo last words; exit 3"}, Log: log})
	if err == nil {
		t.Fatal("Measure of a failing client returned no error")
	}
	if !strings.Contains(err.Error(), "last words") {
		t.Errorf("error %q lacks the end of the client log", err)
	}
}

func TestWriteLayoutFailureIsError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	_, err := WriteLayout(filepath.Join(file, "layout"), 1, 1024, 1)
	if err == nil {
		t.Fatal("WriteLayout under a regular file returned no error")
	}
	if !strings.Contains(err.Error(), "write layout") {
		t.Errorf("error %q does not name the layout write", err)
	}
}

func TestMedianEvenCount(t *testing.T) {
	if got := Median([]int64{4, 1, 3, 2}); got != 2 {
		t.Errorf("Median = %d, expected 2", got)
	}
}
