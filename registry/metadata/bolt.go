package metadata

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/rulesimg/img/registry/blobstore"
)

// Bucket layout:
//
//	repositories/<repository>/manifests/<digest>   JSON boltManifest
//	repositories/<repository>/tags/<tag>           digest
//	repositories/<repository>/referrers/<subject digest> <referrer digest>   JSON Descriptor
//	blobsizes/<digest>                              8-byte big-endian size
//	aliases/<digest>                                digest of the same bytes (blobstore.AliasIndex)
//	unlinked/<repository> NUL <digest>              1: a blob deleted from that repository
var (
	bucketRepositories = []byte("repositories")
	bucketManifests    = []byte("manifests")
	bucketTags         = []byte("tags")
	bucketReferrers    = []byte("referrers")
	bucketBlobSizes    = []byte("blobsizes")
	bucketAliases      = []byte("aliases")
	bucketUnlinked     = []byte("unlinked")
)

type boltManifest struct {
	MediaType string        `json:"mediaType"`
	Content   []byte        `json:"content"`
	Subject   digest.Digest `json:"subject,omitempty"`
}

// Bolt is the metadata store in one bbolt file. bbolt syncs the file on every commit, so a
// write that returned is on disk, and a crash mid-write leaves the previous state.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the database file at path. Only one process may open it at a time,
// and a second one fails after a 5-second wait for the file lock.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open metadata database %s (is another img registry using this --data-dir?): %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRepositories, bucketBlobSizes, bucketAliases, bucketUnlinked} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize metadata database %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

// Close closes the database file.
func (b *Bolt) Close() error { return b.db.Close() }

// repository returns the repository's bucket, or nil when it does not exist and create is false.
func repository(tx *bolt.Tx, name string, create bool) (*bolt.Bucket, error) {
	repositories := tx.Bucket(bucketRepositories)
	if !create {
		return repositories.Bucket([]byte(name)), nil
	}
	repo, err := repositories.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, err
	}
	for _, sub := range [][]byte{bucketManifests, bucketTags, bucketReferrers} {
		if _, err := repo.CreateBucketIfNotExists(sub); err != nil {
			return nil, err
		}
	}
	return repo, nil
}

func referrerKey(subject, referrer digest.Digest) []byte {
	return []byte(subject.String() + " " + referrer.String())
}

// PutManifest stores the manifest and its tags.
func (b *Bolt) PutManifest(ctx context.Context, repositoryName string, manifest Manifest, tags []string) error {
	record, err := json.Marshal(boltManifest{MediaType: manifest.MediaType, Content: manifest.Content, Subject: manifest.Subject})
	if err != nil {
		return fmt.Errorf("encode manifest %s: %w", manifest.Digest, err)
	}
	var referrer []byte
	if manifest.Subject != "" && manifest.Referrer != nil {
		if referrer, err = json.Marshal(manifest.Referrer); err != nil {
			return fmt.Errorf("encode referrer %s: %w", manifest.Digest, err)
		}
	}

	err = b.db.Update(func(tx *bolt.Tx) error {
		repo, err := repository(tx, repositoryName, true)
		if err != nil {
			return err
		}
		if err := repo.Bucket(bucketManifests).Put([]byte(manifest.Digest), record); err != nil {
			return err
		}
		for _, tag := range tags {
			if err := repo.Bucket(bucketTags).Put([]byte(tag), []byte(manifest.Digest)); err != nil {
				return err
			}
		}
		if referrer != nil {
			return repo.Bucket(bucketReferrers).Put(referrerKey(manifest.Subject, manifest.Digest), referrer)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store manifest %s in repository %s: %w", manifest.Digest, repositoryName, err)
	}
	return nil
}

// Manifest returns a manifest by digest.
func (b *Bolt) Manifest(ctx context.Context, repositoryName string, dgst digest.Digest) (Manifest, error) {
	var record boltManifest
	found := false
	err := b.db.View(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		value := repo.Bucket(bucketManifests).Get([]byte(dgst))
		if value == nil {
			return nil
		}
		found = true
		return json.Unmarshal(value, &record)
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s in repository %s: %w", dgst, repositoryName, err)
	}
	if !found {
		return Manifest{}, fmt.Errorf("manifest %s in repository %s: %w", dgst, repositoryName, ErrManifestUnknown)
	}
	return Manifest{Digest: dgst, MediaType: record.MediaType, Content: record.Content, Subject: record.Subject}, nil
}

// ResolveTag returns the digest a tag points at.
func (b *Bolt) ResolveTag(ctx context.Context, repositoryName, tag string) (digest.Digest, error) {
	var dgst digest.Digest
	err := b.db.View(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		dgst = digest.Digest(repo.Bucket(bucketTags).Get([]byte(tag)))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read tag %s in repository %s: %w", tag, repositoryName, err)
	}
	if dgst == "" {
		return "", fmt.Errorf("tag %s in repository %s: %w", tag, repositoryName, ErrManifestUnknown)
	}
	return dgst, nil
}

// DeleteManifest removes a manifest with its tags and referrers entry.
func (b *Bolt) DeleteManifest(ctx context.Context, repositoryName string, dgst digest.Digest) error {
	found := false
	err := b.db.Update(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		manifests := repo.Bucket(bucketManifests)
		value := manifests.Get([]byte(dgst))
		if value == nil {
			return nil
		}
		found = true

		var record boltManifest
		if err := json.Unmarshal(value, &record); err != nil {
			return err
		}
		if err := manifests.Delete([]byte(dgst)); err != nil {
			return err
		}
		if record.Subject != "" {
			if err := repo.Bucket(bucketReferrers).Delete(referrerKey(record.Subject, dgst)); err != nil {
				return err
			}
		}
		return deleteTagsOf(repo.Bucket(bucketTags), dgst)
	})
	if err != nil {
		return fmt.Errorf("delete manifest %s in repository %s: %w", dgst, repositoryName, err)
	}
	if !found {
		return fmt.Errorf("manifest %s in repository %s: %w", dgst, repositoryName, ErrManifestUnknown)
	}
	return nil
}

func deleteTagsOf(tags *bolt.Bucket, dgst digest.Digest) error {
	var stale [][]byte
	err := tags.ForEach(func(tag, target []byte) error {
		if string(target) == string(dgst) {
			stale = append(stale, bytes.Clone(tag))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, tag := range stale {
		if err := tags.Delete(tag); err != nil {
			return err
		}
	}
	return nil
}

// DeleteTag removes a tag.
func (b *Bolt) DeleteTag(ctx context.Context, repositoryName, tag string) error {
	found := false
	err := b.db.Update(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		tags := repo.Bucket(bucketTags)
		if tags.Get([]byte(tag)) == nil {
			return nil
		}
		found = true
		return tags.Delete([]byte(tag))
	})
	if err != nil {
		return fmt.Errorf("delete tag %s in repository %s: %w", tag, repositoryName, err)
	}
	if !found {
		return fmt.Errorf("tag %s in repository %s: %w", tag, repositoryName, ErrManifestUnknown)
	}
	return nil
}

// Tags lists tags in lexical order, which is bbolt's key order.
func (b *Bolt) Tags(ctx context.Context, repositoryName, last string, n int) ([]string, error) {
	tags := []string{}
	found := false
	err := b.db.View(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		found = true
		tags = listKeys(repo.Bucket(bucketTags), last, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tags in repository %s: %w", repositoryName, err)
	}
	if !found {
		return nil, fmt.Errorf("repository %s: %w", repositoryName, ErrRepositoryUnknown)
	}
	return tags, nil
}

func listKeys(bucket *bolt.Bucket, last string, n int) []string {
	keys := []string{}
	cursor := bucket.Cursor()
	key, _ := cursor.First()
	if last != "" {
		key, _ = cursor.Seek([]byte(last))
		if key != nil && string(key) == last {
			key, _ = cursor.Next()
		}
	}
	for ; key != nil && (n < 0 || len(keys) < n); key, _ = cursor.Next() {
		keys = append(keys, string(key))
	}
	return keys
}

// Referrers returns the referrers of subject.
func (b *Bolt) Referrers(ctx context.Context, repositoryName string, subject digest.Digest) ([]Descriptor, error) {
	descriptors := []Descriptor{}
	err := b.db.View(func(tx *bolt.Tx) error {
		repo, _ := repository(tx, repositoryName, false)
		if repo == nil {
			return nil
		}
		prefix := []byte(subject.String() + " ")
		cursor := repo.Bucket(bucketReferrers).Cursor()
		for key, value := cursor.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, value = cursor.Next() {
			var descriptor Descriptor
			if err := json.Unmarshal(value, &descriptor); err != nil {
				return err
			}
			descriptors = append(descriptors, descriptor)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s in repository %s: %w", subject, repositoryName, err)
	}
	return descriptors, nil
}

// Repositories lists repository names.
func (b *Bolt) Repositories(ctx context.Context, last string, n int) ([]string, error) {
	var names []string
	err := b.db.View(func(tx *bolt.Tx) error {
		names = listKeys(tx.Bucket(bucketRepositories), last, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list repositories: %w", err)
	}
	return names, nil
}

// BlobSize returns a recorded blob size, or blobstore.ErrNotFound.
func (b *Bolt) BlobSize(ctx context.Context, dgst digest.Digest) (int64, error) {
	var size int64 = -1
	err := b.db.View(func(tx *bolt.Tx) error {
		value := tx.Bucket(bucketBlobSizes).Get([]byte(dgst))
		if len(value) == 8 {
			size = int64(binary.BigEndian.Uint64(value))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read size of blob %s: %w", dgst, err)
	}
	if size < 0 {
		return 0, fmt.Errorf("size of blob %s not recorded: %w", dgst, blobstore.ErrNotFound)
	}
	return size, nil
}

// PutBlobSize records a blob size.
func (b *Bolt) PutBlobSize(ctx context.Context, dgst digest.Digest, size int64) error {
	var value [8]byte
	binary.BigEndian.PutUint64(value[:], uint64(size))
	// Batch shares one fsync among concurrent commits of different blobs.
	err := b.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobSizes).Put([]byte(dgst), value[:])
	})
	if err != nil {
		return fmt.Errorf("record size of blob %s: %w", dgst, err)
	}
	return nil
}

// PutBlobSizes records many blob sizes in one transaction.
func (b *Bolt) PutBlobSizes(ctx context.Context, sizes map[digest.Digest]int64) error {
	if len(sizes) == 0 {
		return nil
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		bucket := tx.Bucket(bucketBlobSizes)
		for dgst, size := range sizes {
			var value [8]byte
			binary.BigEndian.PutUint64(value[:], uint64(size))
			if err := bucket.Put([]byte(dgst), value[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record sizes of %d blobs: %w", len(sizes), err)
	}
	return nil
}

// DeleteBlobSize removes a blob size. Removing an unknown digest is not an error.
func (b *Bolt) DeleteBlobSize(ctx context.Context, dgst digest.Digest) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobSizes).Delete([]byte(dgst))
	})
	if err != nil {
		return fmt.Errorf("forget size of blob %s: %w", dgst, err)
	}
	return nil
}

// Alias returns the digest recorded for dgst, or blobstore.ErrNotFound.
func (b *Bolt) Alias(ctx context.Context, dgst digest.Digest) (digest.Digest, error) {
	var target digest.Digest
	err := b.db.View(func(tx *bolt.Tx) error {
		target = digest.Digest(tx.Bucket(bucketAliases).Get([]byte(dgst)))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read alias of blob %s: %w", dgst, err)
	}
	if target == "" {
		return "", fmt.Errorf("no alias recorded for blob %s: %w", dgst, blobstore.ErrNotFound)
	}
	return target, nil
}

// PutAlias records that dgst names the same bytes as target.
func (b *Bolt) PutAlias(ctx context.Context, dgst, target digest.Digest) error {
	err := b.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAliases).Put([]byte(dgst), []byte(target))
	})
	if err != nil {
		return fmt.Errorf("record alias of blob %s: %w", dgst, err)
	}
	return nil
}

// DeleteAlias removes an alias. Removing an unknown digest is not an error.
func (b *Bolt) DeleteAlias(ctx context.Context, dgst digest.Digest) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAliases).Delete([]byte(dgst))
	})
	if err != nil {
		return fmt.Errorf("forget alias of blob %s: %w", dgst, err)
	}
	return nil
}

func unlinkedKey(repository string, dgst digest.Digest) []byte {
	return []byte(repository + "\x00" + dgst.String())
}

// UnlinkBlob records that the blob was deleted from repository.
func (b *Bolt) UnlinkBlob(ctx context.Context, repository string, dgst digest.Digest) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnlinked).Put(unlinkedKey(repository, dgst), []byte{1})
	})
	if err != nil {
		return fmt.Errorf("record the deletion of blob %s from %s: %w", dgst, repository, err)
	}
	return nil
}

// LinkBlobs removes the deletion records of dgsts in repository. It writes only when one
// exists, so the common case, an upload or manifest of blobs never deleted, costs a read.
func (b *Bolt) LinkBlobs(ctx context.Context, repository string, dgsts ...digest.Digest) error {
	var unlinked []digest.Digest
	err := b.db.View(func(tx *bolt.Tx) error {
		bucket := tx.Bucket(bucketUnlinked)
		for _, dgst := range dgsts {
			if bucket.Get(unlinkedKey(repository, dgst)) != nil {
				unlinked = append(unlinked, dgst)
			}
		}
		return nil
	})
	if err != nil || len(unlinked) == 0 {
		return err
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		bucket := tx.Bucket(bucketUnlinked)
		for _, dgst := range unlinked {
			if err := bucket.Delete(unlinkedKey(repository, dgst)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("link blobs again in %s: %w", repository, err)
	}
	return nil
}

// BlobUnlinked reports whether the blob was deleted from repository and not linked since.
func (b *Bolt) BlobUnlinked(ctx context.Context, repository string, dgst digest.Digest) (bool, error) {
	unlinked := false
	err := b.db.View(func(tx *bolt.Tx) error {
		unlinked = tx.Bucket(bucketUnlinked).Get(unlinkedKey(repository, dgst)) != nil
		return nil
	})
	return unlinked, err
}
