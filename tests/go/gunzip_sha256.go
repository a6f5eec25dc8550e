// Reads each gzip file named on the command line with Go's compress/gzip — the reader Docker,
// containerd and skopeo use for layer blobs — and prints the sha256 of what it decompressed,
// one `sha256:<hex>` line per file. Used by tests/it/gzip_readers.rs.
package main

import (
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

func main() {
	for _, path := range os.Args[1:] {
		file, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// Multistream is on by default: every member is read, as containerd's
		// archive/compression.DecompressStream does.
		reader, err := gzip.NewReader(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, path, err)
			os.Exit(1)
		}
		hash := sha256.New()
		if _, err := io.Copy(hash, reader); err != nil {
			fmt.Fprintln(os.Stderr, path, err)
			os.Exit(1)
		}
		file.Close()
		fmt.Printf("sha256:%x\n", hash.Sum(nil))
	}
}
