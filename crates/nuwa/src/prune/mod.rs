//! Visual-token reduction methods: pure tensor code over saliency rows, features and attention scores.
//! Nothing here knows a model; the pipeline feeds each method from the models' hooks.
pub mod nuwa;

/// The methods a request can ask for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    /// Every vision token, the unpruned model.
    None,
    Nuwa(nuwa::NuwaConfig),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Nuwa(_) => "nuwa",
        }
    }
}
