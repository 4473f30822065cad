package metadata

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/rulesimg/img/registry/blobstore"
)

func openTestBolt(t *testing.T) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "metadata.db")
	store, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store, path
}

func TestBoltManifestAndTags(t *testing.T) {
	ctx := context.Background()
	store, _ := openTestBolt(t)
	content := []byte(`{"schemaVersion":2}`)
	manifest := Manifest{Digest: digest.FromBytes(content), MediaType: "application/vnd.oci.image.manifest.v1+json", Content: content}

	if err := store.PutManifest(ctx, "app/web", manifest, []string{"v1", "latest"}); err != nil {
		t.Fatal(err)
	}

	got, err := store.Manifest(ctx, "app/web", manifest.Digest)
	if err != nil {
		t.Fatalf("Manifest: %v", err)
	}
	if string(got.Content) != string(content) {
		t.Errorf("Manifest content = %s, want %s", got.Content, content)
	}
	if got.MediaType != manifest.MediaType {
		t.Errorf("Manifest media type = %s, want %s", got.MediaType, manifest.MediaType)
	}
	dgst, err := store.ResolveTag(ctx, "app/web", "v1")
	if err != nil || dgst != manifest.Digest {
		t.Errorf("ResolveTag(v1) = %s, %v, want %s", dgst, err, manifest.Digest)
	}
	tags, err := store.Tags(ctx, "app/web", "", -1)
	if err != nil || !slices.Equal(tags, []string{"latest", "v1"}) {
		t.Errorf("Tags = %v, %v, want [latest v1]", tags, err)
	}
	tags, _ = store.Tags(ctx, "app/web", "latest", 5)
	if !slices.Equal(tags, []string{"v1"}) {
		t.Errorf("Tags after latest = %v, want [v1]", tags)
	}
	if _, err := store.Manifest(ctx, "app/other", manifest.Digest); !errors.Is(err, ErrManifestUnknown) {
		t.Errorf("Manifest in another repository = %v, want ErrManifestUnknown", err)
	}
	if _, err := store.Tags(ctx, "app/other", "", -1); !errors.Is(err, ErrRepositoryUnknown) {
		t.Errorf("Tags of unknown repository = %v, want ErrRepositoryUnknown", err)
	}
}

func TestBoltDeleteManifestRemovesTagsAndReferrer(t *testing.T) {
	ctx := context.Background()
	store, _ := openTestBolt(t)
	subject := digest.FromString("subject")
	content := []byte(`{"subject":{}}`)
	dgst := digest.FromBytes(content)
	referrer := &Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: dgst, Size: int64(len(content)), ArtifactType: "application/example"}
	store.PutManifest(ctx, "repo", Manifest{Digest: dgst, MediaType: referrer.MediaType, Content: content, Subject: subject, Referrer: referrer}, []string{"sig"})

	referrers, err := store.Referrers(ctx, "repo", subject)
	if err != nil || len(referrers) != 1 || referrers[0].ArtifactType != "application/example" {
		t.Fatalf("Referrers = %+v, %v, want one entry", referrers, err)
	}

	if err := store.DeleteManifest(ctx, "repo", dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ResolveTag(ctx, "repo", "sig"); !errors.Is(err, ErrManifestUnknown) {
		t.Errorf("ResolveTag after delete = %v, want ErrManifestUnknown", err)
	}
	referrers, _ = store.Referrers(ctx, "repo", subject)
	if len(referrers) != 0 {
		t.Errorf("Referrers after delete = %+v, want none", referrers)
	}
	if err := store.DeleteManifest(ctx, "repo", dgst); !errors.Is(err, ErrManifestUnknown) {
		t.Errorf("second DeleteManifest = %v, want ErrManifestUnknown", err)
	}
}

func TestBoltBlobSizesSurviveReopen(t *testing.T) {
	ctx := context.Background()
	store, path := openTestBolt(t)
	dgst := digest.FromString("blob")
	if err := store.PutBlobSize(ctx, dgst, 1234); err != nil {
		t.Fatal(err)
	}
	store.Close()

	reopened, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer reopened.Close()
	size, err := reopened.BlobSize(ctx, dgst)
	if err != nil || size != 1234 {
		t.Errorf("BlobSize = %d, %v, want 1234", size, err)
	}
	reopened.DeleteBlobSize(ctx, dgst)
	if _, err := reopened.BlobSize(ctx, dgst); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("BlobSize after delete = %v, want ErrNotFound", err)
	}
}

func TestBoltAliases(t *testing.T) {
	ctx := context.Background()
	store, _ := openTestBolt(t)
	sha512 := digest.SHA512.FromString("content")
	sha256 := digest.FromString("content")

	if err := store.PutAlias(ctx, sha512, sha256); err != nil {
		t.Fatal(err)
	}
	got, err := store.Alias(ctx, sha512)
	if err != nil || got != sha256 {
		t.Errorf("Alias = %s, %v, want %s", got, err, sha256)
	}
	store.DeleteAlias(ctx, sha512)
	if _, err := store.Alias(ctx, sha512); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Alias after delete = %v, want ErrNotFound", err)
	}
}

func TestBoltPutBlobSizes(t *testing.T) {
	ctx := context.Background()
	store, _ := openTestBolt(t)
	sizes := map[digest.Digest]int64{digest.FromString("a"): 1, digest.FromString("bb"): 2}

	if err := store.PutBlobSizes(ctx, sizes); err != nil {
		t.Fatal(err)
	}
	for dgst, want := range sizes {
		if got, err := store.BlobSize(ctx, dgst); err != nil || got != want {
			t.Errorf("BlobSize(%s) = %d, %v, want %d", dgst, got, err, want)
		}
	}
}

func TestBoltSecondOpenFails(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 5s for the file lock")
	}
	_, path := openTestBolt(t)
	start := time.Now()
	if _, err := OpenBolt(path); err == nil {
		t.Fatal("second OpenBolt of a held file succeeded, want a lock error")
	}
	if elapsed := time.Since(start); elapsed < 4*time.Second {
		t.Errorf("second OpenBolt failed after %s, want the 5s lock wait", elapsed)
	}
}
