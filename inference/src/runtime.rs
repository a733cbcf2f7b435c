//! ONNX Runtime, loaded at run time from the library the `onnxruntime`
//! wheel ships (`ORT_DYLIB_PATH`), and one session per model version.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::TensorRef;

/// Why a model cannot be loaded or run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The ONNX Runtime library could not be loaded.
    #[error("ONNX Runtime: {0}")]
    Library(String),
    /// The model file could not be loaded.
    #[error("model {path}: {message}")]
    Load {
        /// Model file.
        path: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// A run failed.
    #[error("inference failed: {0}")]
    Run(String),
}

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per
/// process, ever), from `dylib` or else `$ORT_DYLIB_PATH`.
pub fn ort_environment(dylib: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    ENV.get_or_init(|| {
        let path: PathBuf = dylib
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .ok_or("set ORT_DYLIB_PATH to libonnxruntime.so (onnxruntime==1.31.1 wheel: onnxruntime/capi/)")?;
        ort::init_from(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_name("infermon")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| RuntimeError::Library(e.clone()))
}

/// How a session runs: threads and device. Serde-free on purpose: the
/// worker's config maps onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads one operator may use (ONNX Runtime intra-op).
    pub intra_threads: usize,
    /// Threads running independent branches of the graph (inter-op; >1
    /// switches the session to parallel execution).
    pub inter_threads: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            intra_threads: 1,
            inter_threads: 1,
            device: "cpu".into(),
        }
    }
}

/// One loaded model version: an ONNX Runtime session and where it runs.
pub struct Model {
    session: Session,
    /// Where it runs ("cpu" or "cuda:N").
    pub device: String,
}

impl Model {
    /// Load `path` with `opts`. CUDA goes through ONNX Runtime's CUDA
    /// execution provider; when the library has none (the CPU wheel) or it
    /// fails to start, a warning is logged and the model runs on the CPU —
    /// `device` says where it really runs.
    pub fn load(
        env: &Environment,
        path: &Path,
        opts: &SessionOptions,
    ) -> Result<Self, RuntimeError> {
        let load_err = |message: String| RuntimeError::Load {
            path: path.display().to_string(),
            message,
        };
        let cuda = match opts.device.as_str() {
            "cpu" => None,
            "cuda" => Some(0),
            d => match d.strip_prefix("cuda:").and_then(|n| n.parse::<i32>().ok()) {
                Some(n) => Some(n),
                None => return Err(load_err(format!("device {d:?}: expected cpu or cuda:N"))),
            },
        };
        let builder = (|| -> ort::Result<SessionBuilder> {
            Ok(Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(opts.intra_threads.max(1))?
                .with_inter_threads(opts.inter_threads.max(1))?
                .with_parallel_execution(opts.inter_threads > 1)?)
        })()
        .map_err(|e| load_err(e.to_string()))?;
        let (mut builder, mut actual) = (builder, "cpu".to_string());
        if let Some(n) = cuda {
            if !ep::CUDA::is_available().unwrap_or(false) {
                tracing::warn!(model = %path.display(), "cuda:{n} requested but this ONNX Runtime has no CUDA execution provider; using cpu");
            } else {
                let cuda_ep = ep::CUDA::default()
                    .with_device_id(n)
                    .build()
                    .error_on_failure();
                match builder.with_execution_providers([cuda_ep]) {
                    Ok(b) => {
                        builder = b;
                        actual = format!("cuda:{n}");
                    }
                    Err(e) => {
                        tracing::warn!(model = %path.display(), error = %e, "CUDA execution provider failed; using cpu");
                        builder = e.recover();
                    }
                }
            }
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Self {
            session,
            device: actual,
        })
    }

    /// Run a model with one float32 input of `rows` × `width` (row-major)
    /// and return the float32 output `output`, flattened.
    pub fn run_f32(
        &mut self,
        input: &str,
        rows: usize,
        width: usize,
        data: &[f32],
        output: &str,
    ) -> Result<Vec<f32>, RuntimeError> {
        // A view of the caller's rows: no copy of the input.
        let tensor = TensorRef::from_array_view(([rows, width], data)).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs![input => tensor])
            .map_err(run_err)?;
        let value = outputs
            .get(output)
            .ok_or_else(|| RuntimeError::Run(format!("no output named {output}")))?;
        let (_, values) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        Ok(values.to_vec())
    }

    /// Run a model whose inputs are int64 tensors of one shape (a token
    /// model: ids, mask, types) and return the float32 output `output`
    /// with its shape.
    pub fn run_i64(
        &mut self,
        shape: [usize; 2],
        inputs: &[(&str, &[i64])],
        output: &str,
    ) -> Result<(Vec<usize>, Vec<f32>), RuntimeError> {
        let mut values = Vec::with_capacity(inputs.len());
        for &(name, data) in inputs {
            let t = TensorRef::from_array_view((shape, data)).map_err(run_err)?;
            values.push((name, ort::session::SessionInputValue::from(t)));
        }
        let outputs = self.session.run(values).map_err(run_err)?;
        let value = outputs
            .get(output)
            .ok_or_else(|| RuntimeError::Run(format!("no output named {output}")))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((shape, data.to_vec()))
    }
}

fn run_err(e: ort::Error) -> RuntimeError {
    RuntimeError::Run(e.to_string())
}
