package blobstore_test

import (
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rulesimg/img/registry/blobstore"
)

func TestMetricsCountOperationsByResult(t *testing.T) {
	ctx := context.Background()
	registry := prometheus.NewRegistry()
	metrics, err := blobstore.NewMetrics(registry)
	if err != nil {
		t.Fatal(err)
	}
	store := metrics.Wrap(newFilesystem(t), "fs")

	dgst := put(t, store, "metered")
	store.Stat(ctx, dgst)
	store.Stat(ctx, digest.FromString("absent"))
	if got := read(t, store, dgst); got != "metered" {
		t.Fatalf("read %q", got)
	}

	counts := map[string]float64{}
	families, _ := registry.Gather()
	for _, family := range families {
		for _, metric := range family.GetMetric() {
			key := family.GetName()
			for _, label := range metric.GetLabel() {
				key += " " + label.GetValue()
			}
			counts[key] = metric.GetCounter().GetValue()
		}
	}
	checks := map[string]float64{
		"img_blobstore_operations_total commit ok fs":      1,
		"img_blobstore_operations_total stat ok fs":        1,
		"img_blobstore_operations_total stat not_found fs": 1,
		"img_blobstore_read_bytes_total fs":                float64(len("metered")),
	}
	for key, want := range checks {
		if counts[key] != want {
			t.Errorf("%s = %v, want %v", key, counts[key], want)
		}
	}
}
