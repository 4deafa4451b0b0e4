// Command etcd is the etcd server Tern's Kubernetes tests run behind
// kube-apiserver, built from go.etcd.io/etcd/server/v3 at the release
// k8s.io/kubernetes's go.mod pins (see ../go.mod). It takes etcd's own flags:
//
//	etcd --data-dir DIR --listen-client-urls http://127.0.0.1:PORT ...
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
