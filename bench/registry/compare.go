package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/rulesimg/img/bench/internal/benchkit"
	"github.com/rulesimg/img/internal/testpeer"
)

const (
	imgRegistryName  = "img registry"
	distributionName = "distribution"
)

// push compares crane push of a 1 GiB, 10-layer layout into a fresh img registry
// (filesystem store) and a fresh distribution registry per run.
func (b *bench) push() error {
	s := newScenario("Push throughput: crane push of 1 GiB in 10 layers into an empty registry", imgRegistryName, distributionName)
	b.results = append(b.results, s)

	layout, err := benchkit.WriteLayout(filepath.Join(b.work, "push-layout"), 10, 1<<30, 1)
	if err != nil {
		return err
	}
	defer os.RemoveAll(layout.Dir)
	s.setup = append(s.setup, fmt.Sprintf("layout: %d blobs, %d bytes (testpeer.WriteLayout, gzip with stored blocks)", len(layout.Blobs), benchkit.BlobsSize(layout)))
	s.ratios = []ratioTarget{{"wall", imgRegistryName, distributionName, wallTime, 0.6, false}}

	return b.cranePushRuns(s, layout, "push-registry")
}

// uploadRSS pushes one 2 GiB layer with crane into a fresh registry per run and records
// the registry's peak RSS.
func (b *bench) uploadRSS() error {
	s := newScenario("Upload RSS: crane push of one 2 GiB layer into an empty registry", imgRegistryName, distributionName)
	b.results = append(b.results, s)

	layout, err := benchkit.WriteLayout(filepath.Join(b.work, "rss-layout"), 1, 2<<30, 3)
	if err != nil {
		return err
	}
	defer os.RemoveAll(layout.Dir)
	s.setup = append(s.setup, fmt.Sprintf("layout: %d blobs, %d bytes", len(layout.Blobs), benchkit.BlobsSize(layout)))
	s.ratios = []ratioTarget{{"wall", imgRegistryName, distributionName, wallTime, 0, false}}
	s.limits = []limitTarget{{imgRegistryName, "registry peak RSS", serverPeakRSS, 100 << 20, benchkit.FormatMiB}}

	return b.cranePushRuns(s, layout, "rss-registry")
}

// cranePushRuns runs crane push of layout into a new img registry or distribution, as
// s.order names them, per run and registry, with its storage in $WORK/dirName, and checks
// the pushed manifest each time.
func (b *bench) cranePushRuns(s *scenario, layout testpeer.LayoutInfo, dirName string) error {
	for run := 1; run <= b.runs; run++ {
		for i := range s.order {
			name := s.order[(run+i)%len(s.order)]
			dir := filepath.Join(b.work, dirName)
			var reg *benchkit.Registry
			var err error
			if name == imgRegistryName {
				reg, err = benchkit.StartImgRegistry(b.img, dir, false)
			} else {
				reg, err = benchkit.StartDistribution(b.tool("registry"), dir)
			}
			if err != nil {
				return err
			}
			push := benchkit.Command{Args: []string{b.tool("crane"), "push", layout.Dir, reg.Addr + "/bench:latest", "--insecure"}}
			err = b.run(s, name, run, push, benchkit.BlobsSize(layout), reg.PID())
			if err == nil {
				err = checkManifest(reg.Addr, layout)
			}
			reg.StopAndRemove()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// get compares GETs of a 1 GiB blob through img registry's remote cache store, a direct
// ByteStream read from bazel-remote, and a GET from distribution's filesystem storage.
func (b *bench) get() error {
	const (
		throughImg = "img registry, reapi store (HTTP GET)"
		direct     = "bazel-remote, direct ByteStream read"
		fromDisk   = "distribution, filesystem (HTTP GET)"
	)
	s := newScenario("Blob GET: one 1 GiB layer", throughImg, direct, fromDisk)
	b.results = append(b.results, s)

	image, notes, err := b.sharedImage()
	if err != nil {
		return err
	}
	s.setup = append(s.setup, notes...)
	layer := image.layout.Layers[0]
	hash := layer.Digest.Encoded()

	imgReg, err := b.casRegistry(filepath.Join(b.work, "get-img-registry"))
	if err != nil {
		return err
	}
	defer imgReg.StopAndRemove()
	wall, err := b.once(b.casPushCommand(image, imgReg).Args...)
	if err != nil {
		return err
	}
	if err := checkManifest(imgReg.Addr, image.layout); err != nil {
		return err
	}
	s.setup = append(s.setup, fmt.Sprintf("registered in img registry with `img push --strategy cas_registry` (%.2fs)", wall.Seconds()))

	dist, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "get-distribution"))
	if err != nil {
		return err
	}
	defer dist.StopAndRemove()
	if _, err := b.once(b.tool("crane"), "push", image.layout.Dir, dist.Addr+"/bench:latest", "--insecure"); err != nil {
		return err
	}
	s.setup = append(s.setup, "pushed into distribution with crane push")
	// From here on the layer exists only in the cache and in distribution's storage.
	if err := benchkit.RemoveLayers(image.layout); err != nil {
		return err
	}

	s.ratios = []ratioTarget{
		{"throughput", throughImg, direct, throughput, 0.8, true},
		{"throughput", throughImg, fromDisk, throughput, 0, true},
	}
	blobURL := func(addr string) string { return "http://" + addr + "/v2/bench/blobs/" + layer.Digest.String() }
	clients := map[string]func() (benchkit.Command, []int){
		throughImg: func() (benchkit.Command, []int) {
			return benchkit.Command{Args: []string{b.self, "fetch-http", blobURL(imgReg.Addr), hash}}, []int{imgReg.PID(), b.cache.PID()}
		},
		direct: func() (benchkit.Command, []int) {
			return benchkit.Command{Args: []string{b.self, "fetch-cas", b.cache.Endpoint(), hash, fmt.Sprint(layer.Size)}}, []int{b.cache.PID()}
		},
		fromDisk: func() (benchkit.Command, []int) {
			return benchkit.Command{Args: []string{b.self, "fetch-http", blobURL(dist.Addr), hash}}, []int{dist.PID()}
		},
	}
	for run := 1; run <= b.runs; run++ {
		for i := range s.order {
			name := s.order[(run+i)%len(s.order)]
			c, servers := clients[name]()
			if err := b.run(s, name, run, c, layer.Size, servers...); err != nil {
				return err
			}
		}
	}
	s.notes = append(s.notes, "The server peak RSS column is VmHWM of the first server listed: img registry, bazel-remote or distribution, over its whole life.")
	return nil
}

// sharedImage returns the 1 GiB one-layer image in the cache, uploading it on first use.
func (b *bench) sharedImage() (*casImage, []string, error) {
	if b.getBlob != nil {
		return b.getBlob, nil, nil
	}
	image, notes, err := b.uploadImage("get", 1, 1<<30, 2)
	if err != nil {
		return nil, nil, err
	}
	b.getBlob = image
	return image, notes, nil
}

// casPush times img push --strategy cas_registry of a 10 MiB and a large image whose blobs
// are in the cache, into a fresh img registry per run.
func (b *bench) casPush() error {
	small, large := "img push, 10 MiB image", fmt.Sprintf("img push, %s image", formatSize(b.largeCAS))
	s := newScenario("cas_registry push: blobs already in bazel-remote, into an empty img registry", small, large)
	b.results = append(b.results, s)

	smallImage, notes, err := b.uploadImage("cas-small", 10, 10<<20, 4)
	if err != nil {
		return err
	}
	s.setup = append(s.setup, notes...)
	if err := benchkit.RemoveLayers(smallImage.layout); err != nil {
		return err
	}
	largeImage, notes, err := b.uploadImage("cas-large", 10, b.largeCAS, 5)
	if err != nil {
		return err
	}
	s.setup = append(s.setup, notes...)
	if err := benchkit.RemoveLayers(largeImage.layout); err != nil {
		return err
	}
	s.setup = append(s.setup, "the layer files are deleted after the upload, so the layers exist only in the cache")

	s.ratios = []ratioTarget{{"wall", large, small, wallTime, 1.5, false}}
	s.limits = []limitTarget{
		{small, "wall", wallTime, 200e6, formatNanoseconds},
		{large, "wall", wallTime, 200e6, formatNanoseconds},
	}
	images := map[string]*casImage{small: smallImage, large: largeImage}
	for run := 1; run <= b.runs; run++ {
		for i := range s.order {
			name := s.order[(run+i)%len(s.order)]
			reg, err := b.casRegistry(filepath.Join(b.work, "cas-registry"))
			if err != nil {
				return err
			}
			err = b.run(s, name, run, b.casPushCommand(images[name], reg), 0, reg.PID(), b.cache.PID())
			if err == nil {
				err = checkManifest(reg.Addr, images[name].layout)
			}
			reg.StopAndRemove()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
