package faultproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rulesimg/img/internal/testpeer"
)

func TestTCPCutAfterByteStreamRead(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	proxy := NewTCP(t, cache.GRPCAddr)
	blob := make([]byte, 2<<20)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	resource := fmt.Sprintf("blobs/%s/%d", hex.EncodeToString(sum[:]), len(blob))
	putCAS(t, cache.HTTPURL()+"/cas/"+hex.EncodeToString(sum[:]), blob)

	conn, err := grpc.NewClient(proxy.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("connect to the proxy %s: %v", proxy.Addr, err)
	}
	defer conn.Close()
	client := bytestream.NewByteStreamClient(conn)

	if got, err := readAll(client, resource); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("ByteStream.Read through the proxy before any cut: %d bytes, error %v", len(got), err)
	}

	proxy.CutAfter(256 << 10)
	got, err := readAll(client, resource)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ByteStream.Read across the cut: error %v, want code Unavailable", err)
	}
	if len(got) >= len(blob) {
		t.Errorf("ByteStream.Read across the cut returned %d bytes, want fewer than %d", len(got), len(blob))
	}
	if proxy.Cuts() != 1 {
		t.Errorf("Cuts() = %d, want 1", proxy.Cuts())
	}

	if got, err := readAll(client, resource); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("ByteStream.Read after the cut: %d bytes, error %v, want the whole blob", len(got), err)
	}
	if proxy.Connections() != 2 {
		t.Errorf("Connections() = %d, want 2 (the cut one and the reconnect)", proxy.Connections())
	}
}

func TestTCPCutAfterToServerByteStreamWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	proxy := NewTCP(t, cache.GRPCAddr)
	blob := make([]byte, 2<<20)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	blobPath := fmt.Sprintf("blobs/%s/%d", hex.EncodeToString(sum[:]), len(blob))

	conn, err := grpc.NewClient(proxy.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("connect to the proxy %s: %v", proxy.Addr, err)
	}
	defer conn.Close()
	client := bytestream.NewByteStreamClient(conn)

	proxy.CutAfterToServer(512 << 10)
	err = writeAll(client, "uploads/11111111-2222-3333-4444-555555555555/"+blobPath, blob)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ByteStream.Write across the cut: error %v, want code Unavailable", err)
	}
	if proxy.Cuts() != 1 {
		t.Errorf("Cuts() = %d, want 1", proxy.Cuts())
	}

	if err := writeAll(client, "uploads/66666666-7777-8888-9999-000000000000/"+blobPath, blob); err != nil {
		t.Fatalf("ByteStream.Write after the cut: %v", err)
	}
	if got, err := readAll(client, blobPath); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("ByteStream.Read of the written blob: %d bytes, error %v, want the whole blob", len(got), err)
	}
}

func writeAll(client bytestream.ByteStreamClient, resource string, blob []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	stream, err := client.Write(ctx)
	if err != nil {
		return err
	}
	const chunk = 64 << 10
	for offset := 0; offset < len(blob); offset += chunk {
		end := min(offset+chunk, len(blob))
		req := &bytestream.WriteRequest{WriteOffset: int64(offset), Data: blob[offset:end], FinishWrite: end == len(blob)}
		if offset == 0 {
			req.ResourceName = resource
		}
		if err := stream.Send(req); err != nil {
			// Send reports io.EOF when the stream broke; CloseAndRecv returns the status.
			break
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.CommittedSize != int64(len(blob)) {
		return fmt.Errorf("committed size %d, want %d", resp.CommittedSize, len(blob))
	}
	return nil
}

func TestTCPCloseConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("starts bazel-remote")
	}
	cache := testpeer.StartBazelRemote(t)
	proxy := NewTCP(t, cache.HTTPAddr)
	client := newClient()

	resp, err := client.Get("http://" + proxy.Addr + "/status")
	if err != nil {
		t.Fatalf("GET /status through the proxy: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	proxy.CloseConnections()

	resp, err = client.Get("http://" + proxy.Addr + "/status")
	if err != nil {
		t.Fatalf("GET /status after CloseConnections: %v", err)
	}
	resp.Body.Close()
	if proxy.Connections() != 2 {
		t.Errorf("Connections() = %d, want 2 after the first one was closed", proxy.Connections())
	}
}

func readAll(client bytestream.ByteStreamClient, resource string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	stream, err := client.Read(ctx, &bytestream.ReadRequest{ResourceName: resource})
	if err != nil {
		return nil, err
	}
	var data []byte
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return data, err
		}
		data = append(data, resp.Data...)
	}
}

func putCAS(t *testing.T, url string, blob []byte) {
	t.Helper()

	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := newClient().Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s status = %d, want 200", url, resp.StatusCode)
	}
}
