package push

import (
	"github.com/rulesimg/img/blobsource"
	"github.com/rulesimg/img/image"
)

// Eager pushes an image whose blobs are all local files.
func Eager(req *image.Request) Strategy {
	return Strategy{Name: image.StrategyEager, Source: blobsource.Files(req.Files)}
}
