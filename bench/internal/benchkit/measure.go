// Package benchkit runs and measures the client processes of the benchmark programs under
// bench/, starts and stops the servers they talk to, writes their OCI layouts and holds
// the report helpers that both programs share.
package benchkit

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sample is the cost of one run of a client process, and of the servers it talked to.
type Sample struct {
	Tool string
	Run  int
	// Wall is the time from fork to exit of the client.
	Wall time.Duration
	// User and Sys are the client's CPU times from wait4's rusage.
	User, Sys time.Duration
	// MaxRSS is the client's peak resident set size in bytes.
	MaxRSS int64
	// WriteBytes is write_bytes of /proc/PID/io, read after the client exited and before it
	// was reaped: the bytes it caused to be written to the block layer (page cache included).
	WriteBytes int64
	// ServerCPU is the user+sys time the servers spent during the run.
	ServerCPU time.Duration
	// ServerPeakRSS is VmHWM of the first server after the run: its peak resident set
	// size since it started, in bytes. Zero when the run measured no server.
	ServerPeakRSS int64
	// Bytes is the payload the client moved, for throughput. Zero when it does not apply.
	Bytes int64
}

// CPU returns the client's user+sys time.
func (s Sample) CPU() time.Duration {
	return s.User + s.Sys
}

// Command is one client invocation: argv, extra environment and the log file that its
// output is appended to.
type Command struct {
	Args []string
	Env  []string
	Log  string
}

// String returns the command line, with the extra environment in front.
func (c Command) String() string {
	s := strings.Join(c.Args, " ")
	if len(c.Env) > 0 {
		s = strings.Join(c.Env, " ") + " " + s
	}
	return s
}

// Measure runs c to completion and returns its cost. servers are the pids whose CPU time
// during the run goes into ServerCPU, and the first of them also gives ServerPeakRSS.
func Measure(c Command, servers ...int) (Sample, error) {
	logFile, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Sample{}, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "$ %s\n", c)

	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	// Output goes through a pipe that this process copies to the log, because the client's
	// write_bytes would count writes to a log file it held itself.
	output := pipeWriter{logFile}
	cmd.Stdout = output
	cmd.Stderr = output

	serverStart := ProcessCPU(servers)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, fmt.Errorf("start %s: %w", c.Args[0], err)
	}
	err = waitForExit(cmd.Process.Pid)
	wall := time.Since(start)
	if err != nil {
		return Sample{}, fmt.Errorf("wait for %s: %w", c.Args[0], err)
	}
	writeBytes, ioErr := procWriteBytes(cmd.Process.Pid)
	waitErr := cmd.Wait()
	serverCPU := ProcessCPU(servers) - serverStart

	if waitErr != nil {
		return Sample{}, fmt.Errorf("%s failed: %v; the end of the client log:\n%s", c.Args[0], waitErr, FileTail(c.Log, 2000))
	}
	if ioErr != nil {
		return Sample{}, ioErr
	}
	var serverRSS int64
	if len(servers) > 0 {
		if serverRSS, err = PeakRSS(servers[0]); err != nil {
			return Sample{}, err
		}
	}

	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return Sample{
		Wall:          wall,
		User:          cmd.ProcessState.UserTime(),
		Sys:           cmd.ProcessState.SystemTime(),
		MaxRSS:        usage.Maxrss * 1024, // Linux reports kilobytes.
		WriteBytes:    writeBytes,
		ServerCPU:     serverCPU,
		ServerPeakRSS: serverRSS,
	}, nil
}

// waitForExit waits for the exit of pid without reaping it, so /proc/PID/io still holds
// the totals of every thread. After cmd.Wait the entry is gone.
func waitForExit(pid int) error {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != syscall.EINTR {
			return err
		}
	}
}

// pipeWriter hides the *os.File from os/exec, which then gives the child a pipe.
type pipeWriter struct {
	file *os.File
}

func (w pipeWriter) Write(p []byte) (int, error) {
	return w.file.Write(p)
}

func procWriteBytes(pid int) (int64, error) {
	file, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "io"))
	if err != nil {
		return 0, fmt.Errorf("read I/O counters of pid %d: %w", pid, err)
	}
	defer file.Close()

	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		value, ok := strings.CutPrefix(scanner.Text(), "write_bytes: ")
		if ok {
			return strconv.ParseInt(value, 10, 64)
		}
	}
	return 0, fmt.Errorf("no write_bytes in /proc/%d/io", pid)
}

// PeakRSS returns VmHWM of a running process in bytes: the largest resident set size it
// had since it started.
func PeakRSS(pid int) (int64, error) {
	file, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read peak RSS of pid %d: %w", pid, err)
	}
	defer file.Close()

	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		value, ok := strings.CutPrefix(scanner.Text(), "VmHWM:")
		if ok {
			kilobytes, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(value), "kB")), 10, 64)
			return kilobytes * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ProcessCPU returns the summed user+sys time of running processes, 0 for any it cannot
// read.
func ProcessCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		// The command name in brackets may contain spaces, so split after its closing bracket.
		rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
		fields := strings.Fields(rest)
		// Fields 14 and 15 of stat are utime and stime, and rest starts at field 3.
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		total += time.Duration(utime+stime) * time.Second / clockTicks
	}
	return total
}

// FileTail returns the last n bytes of the file at path, or a note that it is unreadable.
func FileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%s unreadable: %v)", path, err)
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}
