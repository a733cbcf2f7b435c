//! ONNX Runtime, loaded at run time from the library the `onnxruntime`
//! wheel ships (`ORT_DYLIB_PATH`), and one session per model version.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::Tensor;

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

/// One loaded model version: a session and the names of its tensors.
pub struct Model {
    session: Session,
    input: String,
    output: String,
    /// Where it runs ("cpu" or "cuda:N").
    pub device: String,
}

impl Model {
    /// Load `path` with `threads` intra-op threads on `device` (`cpu` or
    /// `cuda:N`). CUDA goes through ONNX Runtime's CUDA execution provider;
    /// when the library has none (the CPU wheel) or it fails to start, a
    /// warning is logged and the model runs on the CPU — `device` says
    /// where it really runs.
    pub fn load(
        env: &Environment,
        path: &Path,
        input: &str,
        output: &str,
        threads: usize,
        device: &str,
    ) -> Result<Self, RuntimeError> {
        let load_err = |message: String| RuntimeError::Load {
            path: path.display().to_string(),
            message,
        };
        let cuda = match device {
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
                .with_intra_threads(threads.max(1))?
                .with_inter_threads(1)?)
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
            input: input.to_string(),
            output: output.to_string(),
            device: actual,
        })
    }

    /// Score `rows` rows of `width` columns (row-major): one score per row.
    pub fn score(
        &mut self,
        rows: usize,
        width: usize,
        data: Vec<f32>,
    ) -> Result<Vec<f32>, RuntimeError> {
        let run = |e: ort::Error| RuntimeError::Run(e.to_string());
        let tensor = Tensor::from_array((vec![rows as i64, width as i64], data)).map_err(run)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(run)?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| RuntimeError::Run(format!("no output named {}", self.output)))?;
        let (_, scores) = value.try_extract_tensor::<f32>().map_err(run)?;
        if scores.len() != rows {
            return Err(RuntimeError::Run(format!(
                "{} scores for {rows} rows",
                scores.len()
            )));
        }
        Ok(scores.to_vec())
    }
}
