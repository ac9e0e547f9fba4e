package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// prepareVolumes makes each of the pod's volumes a folder of this machine: emptyDir, configMap,
// secret, downwardAPI and projected (service account tokens through the TokenRequest API);
// hostPath is the path itself. A ConfigMap or Secret that does not exist yet is waited for, as
// a kubelet retries, for up to a minute.
func (r *podRun) prepareVolumes() error {
	for _, v := range r.pod.Spec.Volumes {
		dir := filepath.Join(r.dir, "volumes", v.Name)
		if v.HostPath != nil {
			r.mounts[v.Name] = v.HostPath.Path
			continue
		}
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		_ = os.Chmod(dir, 0o777)
		r.mounts[v.Name] = dir
		var err error
		switch {
		case v.EmptyDir != nil:
		case v.ConfigMap != nil:
			err = r.retry(func() error {
				return r.writeConfigMap(dir, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.DefaultMode, v.ConfigMap.Optional)
			})
		case v.Secret != nil:
			err = r.retry(func() error {
				return r.writeSecret(dir, v.Secret.SecretName, v.Secret.Items, v.Secret.DefaultMode, v.Secret.Optional)
			})
		case v.DownwardAPI != nil:
			err = r.writeDownward(dir, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			err = r.retry(func() error { return r.writeProjected(dir, v.Projected) })
		default:
			err = fmt.Errorf("volume %q: this node supports emptyDir, configMap, secret, downwardAPI, projected and hostPath volumes", v.Name)
		}
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	return nil
}

func (r *podRun) retry(write func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := write()
		if err == nil || !apierrors.IsNotFound(err) || time.Now().After(deadline) || r.stopped() {
			return err
		}
		time.Sleep(time.Second)
	}
}

func mode(m *int32, fallback os.FileMode) os.FileMode {
	if m == nil {
		return fallback
	}
	return os.FileMode(*m)
}

func writeFile(dir, name string, data []byte, perm os.FileMode) error {
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	return os.Chmod(path, perm)
}

func writeKeys(dir string, data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32) error {
	perm := mode(defaultMode, 0o644)
	if len(items) == 0 {
		for k, v := range data {
			if err := writeFile(dir, k, v, perm); err != nil {
				return err
			}
		}
		return nil
	}
	for _, item := range items {
		v, ok := data[item.Key]
		if !ok {
			return fmt.Errorf("key %q not found", item.Key)
		}
		if err := writeFile(dir, item.Path, v, mode(item.Mode, perm)); err != nil {
			return err
		}
	}
	return nil
}

func (r *podRun) writeConfigMap(dir, name string, items []corev1.KeyToPath, defaultMode *int32, optional *bool) error {
	cm, err := r.p.ConfigMaps.ConfigMaps(r.pod.Namespace).Get(name)
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil
		}
		return err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeKeys(dir, data, items, defaultMode)
}

func (r *podRun) writeSecret(dir, name string, items []corev1.KeyToPath, defaultMode *int32, optional *bool) error {
	secret, err := r.p.Secrets.Secrets(r.pod.Namespace).Get(name)
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil
		}
		return err
	}
	return writeKeys(dir, secret.Data, items, defaultMode)
}

func (r *podRun) writeProjected(dir string, v *corev1.ProjectedVolumeSource) error {
	for _, source := range v.Sources {
		var err error
		switch {
		case source.ServiceAccountToken != nil:
			err = r.writeToken(dir, source.ServiceAccountToken, v.DefaultMode)
		case source.ConfigMap != nil:
			err = r.writeConfigMap(dir, source.ConfigMap.Name, source.ConfigMap.Items, v.DefaultMode, source.ConfigMap.Optional)
		case source.Secret != nil:
			err = r.writeSecret(dir, source.Secret.Name, source.Secret.Items, v.DefaultMode, source.Secret.Optional)
		case source.DownwardAPI != nil:
			err = r.writeDownward(dir, source.DownwardAPI.Items, v.DefaultMode)
		default:
			err = fmt.Errorf("unsupported projected source")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeToken asks the API server for a token bound to this pod, as a kubelet does.
func (r *podRun) writeToken(dir string, source *corev1.ServiceAccountTokenProjection, defaultMode *int32) error {
	spec := authenticationv1.TokenRequestSpec{
		ExpirationSeconds: source.ExpirationSeconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID,
		},
	}
	if source.Audience != "" {
		spec.Audiences = []string{source.Audience}
	}
	account := r.pod.Spec.ServiceAccountName
	if account == "" {
		account = "default"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token, err := r.p.Client.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(
		ctx, account, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	return writeFile(dir, source.Path, []byte(token.Status.Token), mode(defaultMode, 0o644))
}

func (r *podRun) writeDownward(dir string, items []corev1.DownwardAPIVolumeFile, defaultMode *int32) error {
	for _, item := range items {
		var value string
		switch {
		case item.FieldRef != nil:
			value = r.fieldValue(item.FieldRef.FieldPath)
		case item.ResourceFieldRef != nil:
			value = r.resourceValue(item.ResourceFieldRef)
		}
		if err := writeFile(dir, item.Path, []byte(value), mode(item.Mode, mode(defaultMode, 0o644))); err != nil {
			return err
		}
	}
	return nil
}

func formatMap(m map[string]string) string {
	lines := make([]string, 0, len(m))
	for k, v := range m {
		lines = append(lines, k+"="+strconv.Quote(v))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (r *podRun) fieldValue(path string) string {
	meta := r.pod.ObjectMeta
	switch path {
	case "metadata.name":
		return meta.Name
	case "metadata.namespace":
		return meta.Namespace
	case "metadata.uid":
		return string(meta.UID)
	case "metadata.labels":
		return formatMap(meta.Labels)
	case "metadata.annotations":
		return formatMap(meta.Annotations)
	case "spec.nodeName":
		return r.pod.Spec.NodeName
	case "spec.serviceAccountName":
		return r.pod.Spec.ServiceAccountName
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels['": meta.Labels, "metadata.annotations['": meta.Annotations} {
		if strings.HasPrefix(path, prefix) {
			return m[strings.TrimSuffix(strings.TrimPrefix(path, prefix), "']")]
		}
	}
	return ""
}

func (r *podRun) resourceValue(ref *corev1.ResourceFieldSelector) string {
	for _, c := range r.pod.Spec.Containers {
		if ref.ContainerName != "" && c.Name != ref.ContainerName {
			continue
		}
		kind, name, _ := strings.Cut(ref.Resource, ".")
		list := c.Resources.Limits
		if kind == "requests" {
			list = c.Resources.Requests
		}
		if q, ok := list[corev1.ResourceName(name)]; ok {
			divisor := ref.Divisor
			if divisor.IsZero() {
				return strconv.FormatInt(q.Value(), 10)
			}
			return strconv.FormatInt((q.MilliValue()+divisor.MilliValue()-1)/divisor.MilliValue(), 10)
		}
		return strconv.Itoa(cpuCount())
	}
	return ""
}
