// berth-libcni: cnitool's interface over the real libcni, so berth's client tests
// meet the Go library that containerd, kubelet (go-cni), nerdctl and cnitool use.
//
//	berth-libcni add|check|del NETWORK NETNS
//	berth-libcni version
//
// Environment as cnitool's: NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
// CAP_ARGS (JSON object), CNI_ARGS (K=V;K=V), CNI_IFNAME (default eth0).
// CNI_CACHE_DIR (default libcni's /var/lib/cni) is where libcni keeps the
// ADD result it replays as prevResult on CHECK and DEL; tests point it at a
// temp dir. The container ID is cnitool's hash of the netns path.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
)

// set by build.sh from the Debian package that provided libcni
var libcniVersion = "unknown"

const (
	envCNIPath        = "CNI_PATH"
	envNetDir         = "NETCONFPATH"
	envCapabilityArgs = "CAP_ARGS"
	envCNIArgs        = "CNI_ARGS"
	envCNIIfname      = "CNI_IFNAME"
	envCacheDir       = "CNI_CACHE_DIR"
	defaultNetDir     = "/etc/cni/net.d"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s add|check|del NETWORK NETNS\n       %s version\n",
		filepath.Base(os.Args[0]), filepath.Base(os.Args[0]))
	os.Exit(2)
}

// parseArgs is cnitool's: every pair exactly K=V, both sides non-empty.
func parseArgs(args string) ([][2]string, error) {
	var result [][2]string
	for _, pair := range strings.Split(args, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		result = append(result, [2]string{kv[0], kv[1]})
	}
	return result, nil
}

func exit(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Printf("libcni %s (spec %s)\n", libcniVersion, version.Current())
		return
	}
	if len(os.Args) != 4 {
		usage()
	}
	command := os.Args[1]
	if command != "add" && command != "check" && command != "del" {
		usage()
	}

	netdir := os.Getenv(envNetDir)
	if netdir == "" {
		netdir = defaultNetDir
	}
	netconf, err := libcni.LoadConfList(netdir, os.Args[2])
	if err != nil {
		exit(err)
	}

	var capabilityArgs map[string]interface{}
	if raw := os.Getenv(envCapabilityArgs); raw != "" {
		if err := json.Unmarshal([]byte(raw), &capabilityArgs); err != nil {
			exit(err)
		}
	}
	var cniArgs [][2]string
	if raw := os.Getenv(envCNIArgs); raw != "" {
		if cniArgs, err = parseArgs(raw); err != nil {
			exit(err)
		}
	}
	ifName, ok := os.LookupEnv(envCNIIfname)
	if !ok {
		ifName = "eth0"
	}
	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		exit(err)
	}
	sum := sha512.Sum512([]byte(netns))
	containerID := fmt.Sprintf("cnitool-%x", sum[:10])

	// cacheDir "" means libcni's default (/var/lib/cni)
	cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv(envCNIPath)), os.Getenv(envCacheDir), nil)
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifName,
		Args:           cniArgs,
		CapabilityArgs: capabilityArgs,
	}

	ctx := context.Background()
	switch command {
	case "add":
		result, err := cninet.AddNetworkList(ctx, netconf, rt)
		if result != nil {
			_ = result.Print()
		}
		exit(err)
	case "check":
		exit(cninet.CheckNetworkList(ctx, netconf, rt))
	case "del":
		exit(cninet.DelNetworkList(ctx, netconf, rt))
	}
}
