// Command importset writes a FileDescriptorSet of the .proto files that protos under proto/
// import from Go modules (the REAPI protos and their googleapis dependencies). protoc reads it
// with --descriptor_set_in, because those modules ship generated Go code but not every .proto
// file it was made from.
package main

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	_ "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// roots are the imported files; their own imports are added transitively.
var roots = []string{
	"build/bazel/remote/execution/v2/remote_execution.proto",
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: importset OUTPUT.pb")
		os.Exit(2)
	}

	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(file protoreflect.FileDescriptor)
	add = func(file protoreflect.FileDescriptor) {
		if seen[file.Path()] {
			return
		}
		seen[file.Path()] = true
		imports := file.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(file))
	}
	for _, path := range roots {
		file, err := protoregistry.GlobalFiles.FindFileByPath(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "importset: %s is not linked in: %v\n", path, err)
			os.Exit(1)
		}
		add(file)
	}

	content, err := proto.Marshal(set)
	if err == nil {
		err = os.WriteFile(os.Args[1], content, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "importset: %v\n", err)
		os.Exit(1)
	}
}
