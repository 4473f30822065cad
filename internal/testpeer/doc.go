// Package testpeer starts real peers for tests: the CNCF distribution registry (plain, with
// htpasswd or with token auth), the bazel-remote cache, and the crane client, all built from
// the versions pinned in tools/go.mod and bound to 127.0.0.1 on random ports. It also writes
// random OCI image layouts to push. Every peer stops on test cleanup, and a failed test prints
// the tail of its log.
package testpeer
