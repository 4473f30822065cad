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
	// ServerCPU is the user+sys time the servers spent during the run.
	ServerCPU time.Duration
	// ServerPeakRSS is VmHWM of the first server after the run: its peak resident set
	// size since it started, in bytes. Zero when the run measured no server.
	ServerPeakRSS int64
	// Bytes is the payload the client moved, for throughput; zero when it does not apply.
	Bytes int64
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
// during the run goes into ServerCPU; the first of them also gives ServerPeakRSS.
func measure(c command, servers ...int) (Sample, error) {
	logFile, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Sample{}, err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "$ %s\n", c)

	cmd := exec.Command(c.args[0], c.args[1:]...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile

	serverStart := processCPU(servers)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, fmt.Errorf("start %s: %w", c.args[0], err)
	}
	waitErr := cmd.Wait()
	wall := time.Since(start)
	serverCPU := processCPU(servers) - serverStart
	if waitErr != nil {
		return Sample{}, fmt.Errorf("%s failed: %v; the end of the client log:\n%s", c.args[0], waitErr, fileTail(c.log, 2000))
	}

	var serverRSS int64
	if len(servers) > 0 {
		if serverRSS, err = peakRSS(servers[0]); err != nil {
			return Sample{}, err
		}
	}
	usage := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return Sample{
		Wall:          wall,
		User:          cmd.ProcessState.UserTime(),
		Sys:           cmd.ProcessState.SystemTime(),
		MaxRSS:        usage.Maxrss * 1024, // Linux reports kilobytes.
		ServerCPU:     serverCPU,
		ServerPeakRSS: serverRSS,
	}, nil
}

// peakRSS returns VmHWM of a running process in bytes: the largest resident set size it had
// since it started.
func peakRSS(pid int) (int64, error) {
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
func median[T int64 | time.Duration | float64](values []T) T {
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
