package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const ociManifestType = "application/vnd.oci.image.manifest.v1+json"

// pushed is a manifest or blob the registry acknowledged.
type pushed struct {
	tag     string
	digest  digest.Digest
	content []byte
}

func pushBlob(client *http.Client, base, repo string, content []byte) error {
	dgst := digest.FromBytes(content)
	resp, err := client.Post(fmt.Sprintf("%s/v2/%s/blobs/uploads/?digest=%s", base, repo, dgst), "application/octet-stream", bytes.NewReader(content))
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push blob %s: status %d", dgst, resp.StatusCode)
	}
	return nil
}

func pushManifest(client *http.Client, base, repo, tag string, content []byte) error {
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", base, repo, tag), bytes.NewReader(content))
	req.Header.Set("Content-Type", ociManifestType)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push manifest %s: status %d", tag, resp.StatusCode)
	}
	return nil
}

// TestCrashKeepsAcknowledgedPushes pushes blobs, manifests and tags from four workers and kills
// the registry with SIGKILL at a random moment. After a restart on the same --data-dir, every
// acknowledged push must be served intact and every listed tag must resolve to a whole manifest.
func TestCrashKeepsAcknowledgedPushes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills img registry")
	}
	const (
		repo       = "crash/test"
		maxPushes  = 200
		numWorkers = 4
	)
	registry := startImgRegistry(t, t.TempDir())
	client := &http.Client{Timeout: 10 * time.Second}
	base := registry.url()

	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	if err := pushBlob(client, base, repo, config); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var manifests, blobs []pushed
	next := 0
	var workers sync.WaitGroup
	for range numWorkers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= maxPushes {
					return
				}

				layer := bytes.Repeat([]byte(fmt.Sprintf("layer %d ", i)), 1000+i*50)
				if err := pushBlob(client, base, repo, layer); err != nil {
					return
				}
				mu.Lock()
				blobs = append(blobs, pushed{digest: digest.FromBytes(layer), content: layer})
				mu.Unlock()

				manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s",`+
					`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},`+
					`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}],`+
					`"annotations":{"push":"%d"}}`,
					ociManifestType, digest.FromBytes(config), len(config), digest.FromBytes(layer), len(layer), i))
				tag := fmt.Sprintf("push-%03d", i)
				if err := pushManifest(client, base, repo, tag, manifest); err != nil {
					return
				}
				mu.Lock()
				manifests = append(manifests, pushed{tag: tag, digest: digest.FromBytes(manifest), content: manifest})
				mu.Unlock()
			}
		}()
	}

	// The pushes take about a second in all, so a kill within the first 600 ms lands mid-stream.
	time.Sleep(time.Duration(50+rand.IntN(550)) * time.Millisecond)
	registry.kill()
	workers.Wait()
	t.Logf("killed the registry after %d acknowledged manifests and %d blobs", len(manifests), len(blobs))

	// The restart listens on a new port, so later requests use registry.url() again.
	registry.start()

	for _, blob := range blobs {
		resp, err := client.Get(fmt.Sprintf("%s/v2/%s/blobs/%s", registry.url(), repo, blob.digest))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blob.content) {
			t.Errorf("acknowledged blob %s: status %d, %d of %d bytes match", blob.digest, resp.StatusCode, len(body), len(blob.content))
		}
	}
	for _, manifest := range manifests {
		resp, err := client.Get(fmt.Sprintf("%s/v2/%s/manifests/%s", registry.url(), repo, manifest.tag))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, manifest.content) {
			t.Errorf("acknowledged tag %s: status %d, body matches: %v", manifest.tag, resp.StatusCode, bytes.Equal(body, manifest.content))
		}
	}

	checkEveryTagWhole(t, client, registry.url(), repo)
}

// checkEveryTagWhole fetches every listed tag and checks that the body hashes to the digest the
// registry reports, so no partially written manifest is visible.
func checkEveryTagWhole(t *testing.T, client *http.Client, baseURL, repo string) {
	t.Helper()
	resp, err := client.Get(fmt.Sprintf("%s/v2/%s/tags/list", baseURL, repo))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()

	for _, tag := range list.Tags {
		resp, err := client.Get(fmt.Sprintf("%s/v2/%s/manifests/%s", baseURL, repo, tag))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		reported := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
		if resp.StatusCode != http.StatusOK || digest.FromBytes(body) != reported {
			t.Errorf("listed tag %s: status %d, body digest %s, reported %s", tag, resp.StatusCode, digest.FromBytes(body), reported)
		}
	}
	t.Logf("after restart, %d tags are listed and each resolves to a whole manifest", len(list.Tags))
}
