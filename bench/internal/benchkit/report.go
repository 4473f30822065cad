package benchkit

import (
	"fmt"
	"slices"
	"time"
)

// SamplesOf returns the samples of tool, in the order they were taken.
func SamplesOf(samples []Sample, tool string) []Sample {
	var out []Sample
	for _, sample := range samples {
		if sample.Tool == tool {
			out = append(out, sample)
		}
	}
	return out
}

// Median returns the middle value, or the mean of the two middle values, and 0 for no
// values.
func Median[T int64 | time.Duration | float64](values []T) T {
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

// FormatMiB formats a byte count in MiB with one decimal.
func FormatMiB(bytes float64) string {
	return fmt.Sprintf("%.1f MiB", bytes/(1<<20))
}
