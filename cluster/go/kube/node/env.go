package main

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// containerEnv resolves a container's environment as a kubelet does: envFrom first, then env in
// order, values from the downward API (status.hostIP and podIP included, which Metaflow's steps
// read and virtual-kubelet's own resolution refuses), Secrets and ConfigMaps; $(VAR) in a value
// is expanded later with what came before it.
func (r *podRun) containerEnv(spec corev1.Container) ([]corev1.EnvVar, error) {
	ns := r.pod.Namespace
	out := []corev1.EnvVar{}
	for _, from := range spec.EnvFrom {
		var data map[string]string
		var optional bool
		switch {
		case from.ConfigMapRef != nil:
			optional = from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional
			cm, err := r.p.ConfigMaps.ConfigMaps(ns).Get(from.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, err
			}
			data = cm.Data
		case from.SecretRef != nil:
			optional = from.SecretRef.Optional != nil && *from.SecretRef.Optional
			secret, err := r.p.Secrets.Secrets(ns).Get(from.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, err
			}
			data = map[string]string{}
			for k, v := range secret.Data {
				data[k] = string(v)
			}
		}
		for k, v := range data {
			out = append(out, corev1.EnvVar{Name: from.Prefix + k, Value: v})
		}
	}
	for _, e := range spec.Env {
		if e.ValueFrom == nil {
			out = append(out, e)
			continue
		}
		value, ok, err := r.envValue(e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			out = append(out, corev1.EnvVar{Name: e.Name, Value: value})
		}
	}
	return out, nil
}

func (r *podRun) envValue(from *corev1.EnvVarSource) (string, bool, error) {
	ns := r.pod.Namespace
	switch {
	case from.FieldRef != nil:
		switch from.FieldRef.FieldPath {
		case "status.hostIP", "status.podIP", "status.hostIPs", "status.podIPs":
			return r.p.NodeIP, true, nil
		}
		return r.fieldValue(from.FieldRef.FieldPath), true, nil
	case from.ResourceFieldRef != nil:
		return r.resourceValue(from.ResourceFieldRef), true, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		secret, err := r.p.Secrets.Secrets(ns).Get(ref.Name)
		if err == nil {
			if v, ok := secret.Data[ref.Key]; ok {
				return string(v), true, nil
			}
			err = fmt.Errorf("key %q not in Secret %s", ref.Key, ref.Name)
		}
		if ref.Optional != nil && *ref.Optional {
			return "", false, nil
		}
		return "", false, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := r.p.ConfigMaps.ConfigMaps(ns).Get(ref.Name)
		if err == nil {
			if v, ok := cm.Data[ref.Key]; ok {
				return v, true, nil
			}
			err = fmt.Errorf("key %q not in ConfigMap %s", ref.Key, ref.Name)
		}
		if ref.Optional != nil && *ref.Optional {
			return "", false, nil
		}
		return "", false, err
	}
	return "", false, nil
}
