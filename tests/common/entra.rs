//! A programmable Entra ID v2 token endpoint.

use super::*;

/// How the test Entra endpoint answers the next refresh.
#[derive(Debug, Clone, PartialEq)]
pub enum EntraMode {
    /// Issue a token of this lifetime and rotate the refresh token.
    Ok { lifetime: u64 },
    /// An AADSTS-shaped error body with HTTP 400.
    Error { error: &'static str, code: u32 },
    /// HTTP 500 with an HTML body.
    ServerError,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

#[derive(Default)]
struct EntraState {
    mode: Option<EntraMode>,
    /// The refresh token it accepts; each success rotates it.
    current: String,
    generation: u32,
    presented: Vec<String>,
}

/// A programmable Entra ID v2 token endpoint on loopback
/// (`POST /{tenant}/oauth2/v2.0/token`), for the direct source's fault tests.
pub struct FakeEntra {
    pub authority: String,
    state: Arc<Mutex<EntraState>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeEntra {
    /// Accepts `initial` as the first refresh token.
    pub fn start(initial: &str, mode: EntraMode) -> FakeEntra {
        use axum::{
            extract::State, http::StatusCode, response::IntoResponse, routing::post, Form, Router,
        };
        let state = Arc::new(Mutex::new(EntraState {
            mode: Some(mode),
            current: initial.to_owned(),
            ..EntraState::default()
        }));
        let app = Router::new()
                    .route(
                        "/{tenant}/oauth2/v2.0/token",
                        post(
                            |State(s): State<Arc<Mutex<EntraState>>>,
                             Form(form): Form<std::collections::HashMap<String, String>>| async move {
                                let mut s = s.lock().unwrap();
                                let presented = form.get("refresh_token").cloned().unwrap_or_default();
                                s.presented.push(presented.clone());
                                match s.mode.clone().unwrap() {
                                    EntraMode::Ok { .. } if presented != s.current => (
                                        StatusCode::BAD_REQUEST,
                                        axum::Json(serde_json::json!({
                                            "error": "invalid_grant",
                                            "error_description": "AADSTS9002313: Invalid request.",
                                            "error_codes": [9002313]
                                        })),
                                    )
                                        .into_response(),
                                    EntraMode::Ok { lifetime } => {
                                        s.generation += 1;
                                        s.current = format!("entra-rt-{}", s.generation);
                                        let body = serde_json::json!({
                                            "token_type": "Bearer",
                                            "scope": form.get("scope"),
                                            "expires_in": lifetime,
                                            "ext_expires_in": lifetime,
                                            "access_token": unsigned_jwt(lifetime),
                                            "refresh_token": s.current,
                                        });
                                        axum::Json(body).into_response()
                                    }
                                    EntraMode::Error { error, code } => (
                                        StatusCode::BAD_REQUEST,
                                        axum::Json(serde_json::json!({
                                            "error": error,
                                            "error_description": format!("AADSTS{code}: test"),
                                            "error_codes": [code]
                                        })),
                                    )
                                        .into_response(),
                                    EntraMode::ServerError => {
                                        (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>").into_response()
                                    }
                                    EntraMode::Garbage => (StatusCode::OK, "{not json").into_response(),
                                }
                            },
                        ),
                    )
                    .with_state(state.clone());
        let (addr, stop) = serve_in_background(app);
        FakeEntra {
            authority: format!("http://{addr}"),
            state,
            _stop: stop,
        }
    }

    pub fn set_mode(&self, mode: EntraMode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Refresh tokens presented so far, in order.
    pub fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }

    /// A config file for a direct Entra `azure-token` against this endpoint.
    pub fn config(&self, dir: &Path, refresh_token: &str, extra: &str) -> PathBuf {
        let rt = dir.join("entra-refresh-token");
        write_file(&rt, refresh_token, 0o600);
        let path = dir.join("config.toml");
        write_file(
            &path,
            &format!(
                "[files.azure-token]\nsource = \"entra\"\nauthority = \"{}\"\ntenant = \"contoso\"\n\
                 client_id = \"app\"\nscope = \"https://storage.azure.com/.default\"\n\
                 redirect_uri = \"https://domino.example.com/azure/callback\"\n\
                 refresh_token_file = \"{}\"\nrotated_refresh_token_file = \"{}\"\n{extra}\n",
                self.authority,
                rt.display(),
                dir.join("entra-rotated").display()
            ),
            0o600,
        );
        path
    }
}
