//! `nixfly push` against the token-auth registry: a token that the registry expires mid-push
//! is replaced, and neither the password nor any token is ever printed, even with `-vv`.

use crate::support;

use base64::Engine;
use std::time::Duration;
use support::TestDir;
use support::images::{self, Fault as ImageFault};
use support::proxy::{Fault, FaultProxy, Rule};
use support::readback::{assert_same_image, push_via, pushed_reference};
use support::registry::{AuthMode, Registry};

#[test]
fn a_push_outliving_its_token_completes_and_prints_no_credential() {
    // The registry honours tokens for 2 s while the client is told 300 s, and a 429 holds the
    // first blob commit for 3 s: the next request goes out with a dead token, gets a 401, and
    // the push must fetch a new token and carry on.
    let registry = Registry::start(AuthMode::Token {
        lifetime: Duration::from_secs(2),
        advertised: Duration::from_secs(300),
        one_repository: false,
    });
    let proxy = FaultProxy::start(
        registry.addr,
        vec![Rule::new(
            "PUT",
            "/blobs/uploads/",
            1,
            Fault::status(429, &[("Retry-After", "3")]),
        )],
    );
    let t = TestDir::new();
    let source = t.join("image.tar");
    let written = images::write_stream_layered(
        std::fs::File::create(&source).unwrap(),
        &images::small_layers(),
        ImageFault::None,
    )
    .unwrap();
    let out = push_via(
        &t,
        &registry,
        &proxy.host(),
        source.to_str().unwrap(),
        "app",
        "v1",
        &["-vv", "--output", "plain"],
    );
    let reference = pushed_reference(&out, &proxy.host(), "app");
    assert_eq!(proxy.fired().len(), 1, "{:?}", proxy.requests());
    let tokens = registry.token_server.as_ref().unwrap();
    let issued: Vec<String> = tokens.tokens.lock().unwrap().clone();
    let scopes = tokens.requests.lock().unwrap().clone();
    let push_tokens = scopes.iter().filter(|s| s.contains("repository:app:")).count();
    let mut rejected = proxy.stats.rejected_authorizations.lock().unwrap().clone();
    assert!(!rejected.is_empty(), "the registry refused an expired token");
    rejected.sort();
    rejected.dedup();
    // One token for the first requests, then one per token the registry refused, however
    // many requests in flight it refused: parallel requests share each new token.
    assert_eq!(
        push_tokens,
        1 + rejected.len(),
        "token requests: {scopes:?}; refused tokens: {}",
        rejected.len()
    );
    assert_same_image(&registry, &proxy.direct(&reference), &written);

    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("HTTP PATCH"), "-vv shows requests:\n{printed}");
    let creds = registry.creds();
    let password = creds.split_once(':').unwrap().1;
    let basic = base64::engine::general_purpose::STANDARD.encode(&creds);
    for secret in issued
        .iter()
        .map(String::as_str)
        .chain([password, basic.as_str()])
    {
        assert!(!printed.contains(secret), "a credential was printed:\n{printed}");
    }
}
