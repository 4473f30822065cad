// Package testpeer starts real peers for tests and writes test data for them. It starts the
// CNCF distribution registry (plain, with htpasswd or with token auth) and the bazel-remote
// cache, and runs the crane and regctl clients. All of them are built on demand from the
// versions pinned in tools/go.mod, and the servers bind 127.0.0.1 on random ports. Every
// server stops on test cleanup, and a failed test prints the tail of its log. WriteLayout
// writes random OCI image layouts to push.
package testpeer
