//! Kubernetes identity without the API: kubelet names container log paths after the pod.

pub mod path;

pub use path::meta_from_log_path;
