package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sample is the cost of one run of a client process.
type Sample struct {
	Tool string
	Run  int
	// Wall is the time from fork to exit.
	Wall time.Duration
	// User and Sys are the client's CPU times from wait4's rusage.
	User, Sys time.Duration
	// MaxRSS is the client's peak resident set size in bytes.
	MaxRSS int64
	// WriteBytes is write_bytes of /proc/PID/io, read after the client exited and before it
	// was reaped: the bytes it caused to be written to the block layer (page cache included).
	WriteBytes int64
	// ServerCPU is the user+sys time the servers (registry, cache) spent during the run.
	ServerCPU time.Duration
}

// CPU returns the client's user+sys time.
func (s Sample) CPU() time.Duration {
	return s.User + s.Sys
}

// command is one client invocation: argv, extra environment and where its output goes.
type command struct {
	args []string
	env  []string
	log  string
}

func (c command) String() string {
	s := strings.Join(c.args, " ")
	if len(c.env) > 0 {
		s = strings.Join(c.env, " ") + " " + s
	}
	return s
}

// measure runs c to completion and returns its cost. servers are the pids whose CPU time
// during the run goes into ServerCPU.
func measure(c command, servers ...int) (Sample, error) {
	logFile, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Sample{}, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "$ %s\n", c)

	cmd := exec.Command(c.args[0], c.args[1:]...)
	cmd.Env = append(os.Environ(), c.env...)
	// Output goes through a pipe that this process copies to the log, because the client's
	// write_bytes would count writes to a log file it held itself.
	output := pipeWriter{logFile}
	cmd.Stdout = output
	cmd.Stderr = output

	serverStart := processCPU(servers)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, fmt.Errorf("start %s: %w", c.args[0], err)
	}

	// Wait for the exit without reaping, so /proc/PID/io still holds the totals of every
	// thread. After cmd.Wait the entry is gone.
	var info unix.Siginfo
	for {
		err = unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != syscall.EINTR {
			break
		}
	}
	wall := time.Since(start)
	if err != nil {
		return Sample{}, fmt.Errorf("wait for %s: %w", c.args[0], err)
	}
	writeBytes, ioErr := procWriteBytes(cmd.Process.Pid)
	waitErr := cmd.Wait()
	serverCPU := processCPU(servers) - serverStart

	if waitErr != nil {
		return Sample{}, fmt.Errorf("%s failed: %v; the end of the client log:\n%s", c.args[0], waitErr, fileTail(c.log, 2000))
	}
	if ioErr != nil {
		return Sample{}, ioErr
	}

	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return Sample{
		Wall:       wall,
		User:       cmd.ProcessState.UserTime(),
		Sys:        cmd.ProcessState.SystemTime(),
		MaxRSS:     usage.Maxrss * 1024, // Linux reports kilobytes.
		WriteBytes: writeBytes,
		ServerCPU:  serverCPU,
	}, nil
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

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// processCPU returns the summed user+sys time of running processes, 0 for any it cannot read.
func processCPU(pids []int) time.Duration {
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

// median returns the middle value, or the mean of the two middle values.
func median[T int64 | time.Duration](values []T) T {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[mid]
	}
	return (sorted[mid-1] + sorted[mid]) / 2
}

func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%s unreadable: %v)", path, err)
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}
