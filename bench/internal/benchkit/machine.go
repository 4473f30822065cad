package benchkit

import (
	"os"
	"os/exec"
	"strings"
)

// MemTotal returns MemTotal of /proc/meminfo as the kernel prints it ("16303856 kB"), or
// "unknown".
func MemTotal() string {
	memory := "unknown"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if value, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				memory = strings.TrimSpace(value)
			}
		}
	}
	return memory
}

// KernelRelease returns the running Linux kernel release, or "" when it cannot be read.
func KernelRelease() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(kernel))
}

// CPUModel returns the model name of the first CPU in /proc/cpuinfo, or "unknown".
func CPUModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if value, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(value), ":"))
		}
	}
	return "unknown"
}

// Version runs args, a tool's version command, and returns the first line of its output,
// or "unknown (ERROR)" when the command fails.
func Version(args ...string) string {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// Commit returns the short commit of HEAD in the working directory, with a note when the
// working tree has uncommitted changes.
func Commit() string {
	commit := Version("git", "rev-parse", "--short", "HEAD")
	if status, err := exec.Command("git", "status", "--porcelain").Output(); err == nil && len(status) > 0 {
		commit += ", with uncommitted changes in the working tree"
	}
	return commit
}

// ModuleVersion returns the main module and version that `go version -m` reads from a Go
// binary, for tools such as bazel-remote that have no version flag.
func ModuleVersion(binary string) string {
	out, err := exec.Command("go", "version", "-m", binary).Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	for _, line := range strings.Split(string(out), "\n") {
		if fields := strings.Fields(line); len(fields) >= 3 && fields[0] == "mod" {
			return fields[1] + " " + fields[2]
		}
	}
	return "unknown"
}

// LoadAverage returns the first three fields of /proc/loadavg, or "unknown". Other work on
// the machine shows there, and it slows every client alike only if it stays steady.
func LoadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}
