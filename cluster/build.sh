#!/usr/bin/env bash
# Build the control plane's binaries from the Go modules in cluster/go/ (versions pinned there):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the node (virtual-kubelet with
# our process provider), Argo's workflow-controller and argoexec, Argo Events and nats-server.
#
#   cluster/build.sh [BIN_DIR]   # default: $TORCHPERF_CLUSTER_BIN or /var/tmp/torchperf-cluster/bin
#
# The folder is readable by every user: pods that run as other users than root run these binaries.
#
# Go's build cache makes a rebuild quick; an unchanged binary is not rebuilt at all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${TORCHPERF_CLUSTER_BIN:-/var/tmp/torchperf-cluster/bin}}"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath"
ldflags="-s -w"

# A binary is rebuilt only when its module's go.mod, go.sum or own sources (the node) changed.
stamp() {
    { cat "$here/go/$1/go.mod" "$here/go/$1/go.sum"; find "$here/go/$1" -name '*.go' -not -path '*/src/*' -exec cat {} +; go env GOVERSION; } | sha256sum | cut -c1-16
}

build() {  # build MODULE_DIR OUTPUT PACKAGE
    local start=$SECONDS sum
    sum="$(stamp "$1")"
    if [ -x "$bin/$2" ] && [ "$(cat "$bin/.$2.stamp" 2>/dev/null)" = "$sum" ]; then
        return
    fi
    (cd "$here/go/$1" && go build -ldflags="$ldflags" -o "$bin/$2" "$3")
    echo "$sum" > "$bin/.$2.stamp"
    printf '  %-24s %4d s\n' "$2" $((SECONDS - start))
}

# Argo's module zip lacks workflow/executor/osspecific/signal_linux.go: in Argo's repository it is a
# symbolic link to signal_darwin.go, and Go module zips leave symbolic links out. Build from a copy
# of the module with that link made a file again (go.mod's replace points at the copy).
argo_src="$here/go/argo/src"
if [ ! -f "$argo_src/.complete" ]; then
    version="$(awk '$1 == "github.com/argoproj/argo-workflows/v4" && $2 ~ /^v/ {print $2}' "$here/go/argo/go.mod")"
    module="$(cd "$(mktemp -d)" && go mod download -json "github.com/argoproj/argo-workflows/v4@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    rm -rf "$argo_src" && cp -r "$module" "$argo_src" && chmod -R u+w "$argo_src"
    cp "$argo_src/workflow/executor/osspecific/signal_darwin.go" \
        "$argo_src/workflow/executor/osspecific/signal_linux.go"
    touch "$argo_src/.complete"
fi

echo "building the control plane into $bin"
build etcd etcd go.etcd.io/etcd/server/v3
build kube kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kube node ./node
build nats nats-server github.com/nats-io/nats-server/v2
build argo workflow-controller github.com/argoproj/argo-workflows/v4/cmd/workflow-controller
build argo argoexec github.com/argoproj/argo-workflows/v4/cmd/argoexec
build events argo-events github.com/argoproj/argo-events/cmd
