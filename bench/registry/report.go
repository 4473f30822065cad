package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

// ratioTarget compares the medians of two clients. A zero target means the ratio is
// reported without a target.
type ratioTarget struct {
	metric string
	a, b   string
	value  func(benchkit.Sample) float64
	// target is the bound on median(a)/median(b): a maximum, or a minimum when higher is set.
	target float64
	higher bool
}

// limitTarget is an absolute bound on the median of one client's samples.
type limitTarget struct {
	tool   string
	metric string
	value  func(benchkit.Sample) float64
	limit  float64
	format func(float64) string
}

func wallTime(s benchkit.Sample) float64      { return float64(s.Wall) }
func serverPeakRSS(s benchkit.Sample) float64 { return float64(s.ServerPeakRSS) }

// throughput returns MiB/s of the client's payload over its wall time.
func throughput(s benchkit.Sample) float64 {
	return float64(s.Bytes) / (1 << 20) / s.Wall.Seconds()
}

func formatNanoseconds(ns float64) string { return formatLatency(time.Duration(ns)) }

func formatLatency(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}

func formatSize(bytes int64) string {
	if bytes >= 1<<30 && bytes%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", bytes>>30)
	}
	return fmt.Sprintf("%d MiB", bytes>>20)
}

func joinArgs(args []string) string {
	return strings.Join(args, " ")
}

func medianOf(samples []benchkit.Sample, value func(benchkit.Sample) float64) float64 {
	var values []float64
	for _, s := range samples {
		values = append(values, value(s))
	}
	return benchkit.Median(values)
}

func maxOf(samples []benchkit.Sample, value func(benchkit.Sample) float64) float64 {
	var result float64
	for _, s := range samples {
		result = max(result, value(s))
	}
	return result
}

// describeMachine returns Markdown lines on the machine and the versions of every tool.
func describeMachine(b *bench) []string {
	return []string{
		"- date: " + time.Now().UTC().Format("2006-01-02 15:04 MST"),
		fmt.Sprintf("- machine: %d CPUs, %s memory, Linux %s", runtime.NumCPU(), benchkit.MemTotal(), benchkit.KernelRelease()),
		"- load average (1, 5, 15 min) at the start: " + benchkit.LoadAverage(),
		"- Go: " + runtime.Version(),
		"- img: " + benchkit.Version(b.img, "version") + ", built from commit " + benchkit.Commit(),
		"- crane: " + benchkit.Version(b.tool("crane"), "version"),
		"- registry: " + benchkit.Version(b.tool("registry"), "--version"),
		"- bazel-remote: " + benchkit.ModuleVersion(b.tool("bazel-remote")),
	}
}

// writeReport writes the machine, then per comparison the commands, a table of medians, the
// targets and every sample.
func writeReport(w io.Writer, machine []string, results []*scenario) {
	fmt.Fprintln(w, "### Machine and versions")
	fmt.Fprintln(w)
	for _, line := range machine {
		fmt.Fprintln(w, line)
	}
	for _, s := range results {
		writeScenario(w, s)
	}
}

func writeScenario(w io.Writer, s *scenario) {
	fmt.Fprintf(w, "\n### %s\n\n", s.title)
	for _, line := range s.setup {
		fmt.Fprintf(w, "- %s\n", line)
	}
	if len(s.commands) > 0 {
		fmt.Fprint(w, "\nCommands (ports of the last run):\n\n```\n")
		for _, name := range append(append([]string{}, s.order...), "img bes", "background push") {
			if c, ok := s.commands[name]; ok {
				fmt.Fprintln(w, c)
			}
		}
		fmt.Fprint(w, "```\n")
	}

	if len(s.samples) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| client | runs | wall (median) | wall (min–max) | throughput (median) | server CPU | server peak RSS (median, max) |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
		for _, name := range s.order {
			samples := s.of(name)
			if len(samples) == 0 {
				continue
			}
			var walls, cpus []time.Duration
			for _, sample := range samples {
				walls = append(walls, sample.Wall)
				cpus = append(cpus, sample.ServerCPU)
			}
			minWall, maxWall := walls[0], walls[0]
			for _, wall := range walls {
				minWall, maxWall = min(minWall, wall), max(maxWall, wall)
			}
			rate := "–"
			if samples[0].Bytes > 0 {
				rate = fmt.Sprintf("%.0f MiB/s", medianOf(samples, throughput))
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s–%s | %s | %.2f s | %s, %s |\n", name, len(samples), formatLatency(benchkit.Median(walls)),
				formatLatency(minWall), formatLatency(maxWall), rate, benchkit.Median(cpus).Seconds(),
				benchkit.FormatMiB(medianOf(samples, serverPeakRSS)), benchkit.FormatMiB(maxOf(samples, serverPeakRSS)))
		}
		fmt.Fprintln(w)
	}

	for _, r := range s.ratios {
		a, b := medianOf(s.of(r.a), r.value), medianOf(s.of(r.b), r.value)
		ratio := a / b
		verdict := ""
		switch {
		case r.target == 0:
		case r.higher && ratio >= r.target, !r.higher && ratio <= r.target:
			verdict = fmt.Sprintf(" (target %s %.2f: met)", map[bool]string{true: "≥", false: "≤"}[r.higher], r.target)
		default:
			verdict = fmt.Sprintf(" (target %s %.2f: MISSED)", map[bool]string{true: "≥", false: "≤"}[r.higher], r.target)
		}
		fmt.Fprintf(w, "- %s / %s, median %s: **%.2f**%s\n", r.a, r.b, r.metric, ratio, verdict)
	}
	for _, l := range s.limits {
		value := medianOf(s.of(l.tool), l.value)
		verdict := "met"
		if value >= l.limit {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "- %s, median %s: **%s**, max %s (target < %s: %s)\n", l.tool, l.metric, l.format(value),
			l.format(maxOf(s.of(l.tool), l.value)), l.format(l.limit), verdict)
	}
	for _, line := range s.extra {
		fmt.Fprintln(w, line)
	}
	if len(s.extra) > 0 {
		fmt.Fprintln(w)
	}
	for _, note := range s.notes {
		fmt.Fprintf(w, "- %s\n", note)
	}

	if len(s.samples) > 0 {
		fmt.Fprint(w, "\n<details><summary>every run</summary>\n\n")
		fmt.Fprintln(w, "| run | client | wall | client CPU | server CPU | server peak RSS |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, sample := range s.samples {
			fmt.Fprintf(w, "| %d | %s | %s | %s | %.2f s | %s |\n", sample.Run, sample.Tool, formatLatency(sample.Wall),
				formatLatency(sample.CPU()), sample.ServerCPU.Seconds(), benchkit.FormatMiB(float64(sample.ServerPeakRSS)))
		}
		fmt.Fprint(w, "\n</details>\n")
	}
}
