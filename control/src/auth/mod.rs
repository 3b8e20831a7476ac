//! Who is calling: SigV4 ([`sigv4`]) against the keys of the credentials
//! file, and what the key's role lets it do.
//!
//! Failures are ECS's, and change nothing: no signature at all is
//! `MissingAuthenticationTokenException` (403); an unknown key is
//! `UnrecognizedClientException`; a wrong signature, a wrong scope or a
//! request outside the ±15 minute window is `InvalidSignatureException`;
//! a malformed one is `IncompleteSignatureException`; an instance key
//! calling an operator's operation is `AccessDeniedException`.

pub mod sigv4;

use crate::api::ApiError;
use crate::credentials::{Credentials, Role};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator {
        profile: String,
    },
    /// An instance key: its agent's calls, for instances of its clusters.
    Instance {
        profile: String,
        clusters: Vec<String>,
    },
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Operator { .. })
    }

    /// How error messages name the caller.
    pub fn name(&self) -> String {
        match self {
            Caller::Operator { profile } => format!("dockhand key [{profile}] (operator)"),
            Caller::Instance { profile, .. } => format!("dockhand key [{profile}] (instance)"),
        }
    }

    /// Whether the caller may act on `cluster`.
    pub fn may_use_cluster(&self, cluster: &str) -> bool {
        match self {
            Caller::Operator { .. } => true,
            Caller::Instance { clusters, .. } => clusters.iter().any(|c| c == cluster || c == "*"),
        }
    }
}

/// Checks a request's signature and returns the caller.
pub fn authenticate(
    req: &sigv4::Request,
    creds: &Credentials,
    region: &str,
    now: std::time::SystemTime,
) -> Result<Caller, ApiError> {
    let as_api = |e: sigv4::AuthError| ApiError {
        code: e.code(),
        message: e.to_string(),
        status: e.http_status(),
    };
    let claim = sigv4::parse(req).map_err(as_api)?;
    // The operation is a header: unsigned, one signed request could be
    // replayed as another operation on the same body (ListServices as
    // DeleteCluster) for as long as the signature is current.
    let has_target = req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"));
    if has_target
        && !claim
            .signed_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("x-amz-target"))
    {
        return Err(ApiError::new(
            "IncompleteSignatureException",
            "The request signature does not sign the X-Amz-Target header: SignedHeaders must include x-amz-target.",
        ));
    }
    let Some(key) = creds.find(&claim.access_key) else {
        return Err(ApiError::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    sigv4::verify(req, &claim, &key.secret, "ecs", region, now).map_err(as_api)?;
    Ok(match key.role {
        Role::Operator => Caller::Operator {
            profile: key.profile,
        },
        Role::Instance { clusters } => Caller::Instance {
            profile: key.profile,
            clusters,
        },
    })
}
