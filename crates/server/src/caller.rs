//! Who is calling the admin API: the bearer token, checked before any body byte is read, as an
//! axum extractor. Handlers name the scopes they need (`caller.require`) and pass
//! `caller.actor()` to the audit trail, so every record names who caused it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use ringfence_proto::api::Scope;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// The scopes each kind of request needs, one list for the API and the console alike (a
/// token with `admin` may do everything).
pub mod needs {
    use ringfence_proto::api::Scope;

    /// The catalog, groups, pending role versions and metadata.
    pub const CATALOG: &[Scope] = &[Scope::Read, Scope::Publish, Scope::Approve];
    /// Devices, reports, compliance and the audit trail.
    pub const FLEET: &[Scope] = &[Scope::Read];
    /// Looking at rollouts and rules.
    pub const ROLLOUTS: &[Scope] = &[Scope::Read, Scope::Approve];
    /// Approving, withdrawing, starting and steering rollouts.
    pub const APPROVE: &[Scope] = &[Scope::Approve];
    /// Tokens, device admission, enrollment tokens, rules, cleanup.
    pub const ADMIN: &[Scope] = &[Scope::Admin];
}

/// An authenticated admin caller: a valid, unrevoked token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    /// Refuse (`403`) unless the token carries one of `any_of`, or `admin`.
    pub fn require(&self, any_of: &[Scope]) -> ApiResult<()> {
        let allowed = self.scopes.iter().any(|s| *s == Scope::Admin || any_of.contains(s));
        if allowed {
            return Ok(());
        }
        let wanted = any_of.first().map_or("admin", |s| s.as_str());
        Err(ApiError::Forbidden(format!("this token lacks the {wanted} scope")))
    }

    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        format!("{} (token {})", self.name, self.token_id)
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
        let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
        let secret = value.strip_prefix("Bearer ").ok_or(ApiError::Unauthorized)?;
        let holder = state.tokens.authenticate(secret, crate::unix_now()).await?;
        Ok(Caller::from(holder))
    }
}

impl From<crate::domain::tokens::TokenHolder> for Caller {
    fn from(holder: crate::domain::tokens::TokenHolder) -> Self {
        Caller { token_id: holder.id, name: holder.name, scopes: holder.scopes }
    }
}
