//! Who may talk to a node: TLS (rustls, ring provider) for the public API and internal RPC,
//! mutual TLS between nodes, the optional cluster secret and API tokens, and the
//! certificates `midasflow cert` makes. See `docs/security.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;

/// File names inside `--certs-dir`.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";
/// The subject of every CA `midasflow cert create-ca` makes; `create-node` signs as it.
const CA_COMMON_NAME: &str = "midasflow CA";
/// Years a generated certificate is valid.
pub const CERT_VALIDITY_YEARS: i32 = 10;
/// Longest secret or token file read, and most tokens in a token file.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;
pub const MAX_API_TOKENS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> SecurityError {
    SecurityError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings of a node: what it serves with and what it dials peers with.
#[derive(Clone)]
pub struct NodeTls {
    /// Serves the public API and internal routes. Client certificates are requested and
    /// verified against the CA when offered; internal routes require one.
    pub server: Arc<rustls::ServerConfig>,
    /// Dials peers, verifying them against the CA and presenting this node's certificate.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn roots(ca_cert: &Path) -> Result<rustls::RootCertStore, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_cert)? {
        roots.add(cert).map_err(|e| file_error(ca_cert, e))?;
    }
    Ok(roots)
}

fn alpn_http1() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec()]
}

impl NodeTls {
    /// Loads `ca.crt`, `node.crt` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, SecurityError> {
        let ca = dir.join(CA_CERT_FILE);
        let roots = Arc::new(roots(&ca)?);
        let chain = read_certs(&dir.join(NODE_CERT_FILE))?;
        let key_path = dir.join(NODE_KEY_FILE);
        let key = read_key(&key_path)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| file_error(&key_path, e))?;
        server.alpn_protocols = alpn_http1();
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| file_error(&key_path, e))?;
        client.alpn_protocols = alpn_http1();
        Ok(NodeTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A client configuration for the CLI: trusts the CA in `ca_cert`, presents no certificate.
pub fn client_config(ca_cert: &Path) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_cert)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn_http1();
    Ok(Arc::new(config))
}

fn read_small_file(path: &Path) -> Result<String, SecurityError> {
    let len = std::fs::metadata(path).map_err(|e| file_error(path, e))?.len();
    if len > MAX_SECRET_FILE_BYTES {
        return Err(file_error(
            path,
            format!("is {len} bytes; the limit is {MAX_SECRET_FILE_BYTES}"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

/// The cluster secret: the first line of the file, which must not be empty.
pub fn read_secret_file(path: &Path) -> Result<String, SecurityError> {
    let text = read_small_file(path)?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    check_secret(&secret).map_err(|m| file_error(path, m))?;
    Ok(secret)
}

/// A cluster secret must be long enough not to be guessed.
pub fn check_secret(secret: &str) -> Result<(), String> {
    const MIN_SECRET_BYTES: usize = 16;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the cluster secret is {} bytes; it must be at least {MIN_SECRET_BYTES}",
            secret.len()
        ));
    }
    Ok(())
}

/// API tokens: one per line, blank lines and `#` comments skipped; at least one.
pub fn read_token_file(path: &Path) -> Result<Vec<String>, SecurityError> {
    let tokens: Vec<String> = read_small_file(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(file_error(path, "holds no token"));
    }
    if tokens.len() > MAX_API_TOKENS {
        return Err(file_error(path, format!("holds more than {MAX_API_TOKENS} tokens")));
    }
    Ok(tokens)
}

/// Compares a presented credential with the expected one in constant time.
pub fn credential_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

/// Whether `token` is one of `tokens`, without an early exit that would time the match.
pub fn token_matches(presented: &[u8], tokens: &[String]) -> bool {
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, t| {
            found | presented.ct_eq(t.as_bytes())
        })
        .into()
}

/// True when `listen` binds only the loopback interface.
pub fn is_loopback(listen: &str) -> bool {
    let host = match listen.rsplit_once(':') {
        Some((host, _)) => host,
        None => listen,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn ca_params() -> Result<CertificateParams, SecurityError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| SecurityError::Generate(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    Ok(params)
}

/// Valid from the start of this year for [`CERT_VALIDITY_YEARS`] years.
fn set_validity(params: &mut CertificateParams) {
    const SECONDS_PER_YEAR: u64 = 31_556_952;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (now / SECONDS_PER_YEAR) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CERT_VALIDITY_YEARS, 1, 1);
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), SecurityError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| file_error(path, format!("{e} (remove it first to replace it)")))?;
    file.write_all(contents.as_bytes()).map_err(|e| file_error(path, e))?;
    file.sync_all().map_err(|e| file_error(path, e))
}

/// Makes a new CA (`ca.crt`, `ca.key`) in `dir`; refuses to overwrite.
pub fn create_ca(dir: &Path) -> Result<Vec<PathBuf>, SecurityError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let key = KeyPair::generate().map_err(|e| SecurityError::Generate(e.to_string()))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| SecurityError::Generate(e.to_string()))?;
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(vec![cert_path, key_path])
}

/// Makes `node.crt` and `node.key` in `out_dir`, signed by the CA in `ca_dir`, valid for
/// `hosts` (DNS names or IP addresses) as a server and as a client (mutual TLS), and
/// copies `ca.crt` beside them so `out_dir` is a complete `--certs-dir`.
pub fn create_node_cert(ca_dir: &Path, out_dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, SecurityError> {
    if hosts.is_empty() {
        return Err(SecurityError::Generate("give at least one --host".into()));
    }
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_key_pem = read_small_file(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| file_error(&ca_key_path, e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| SecurityError::Generate(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, hosts[0].as_str());
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params);
    let key = KeyPair::generate().map_err(|e| SecurityError::Generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| SecurityError::Generate(e.to_string()))?;
    std::fs::create_dir_all(out_dir).map_err(|e| file_error(out_dir, e))?;
    let (cert_path, key_path) = (out_dir.join(NODE_CERT_FILE), out_dir.join(NODE_KEY_FILE));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    let mut written = vec![cert_path, key_path];
    let ca_copy = out_dir.join(CA_CERT_FILE);
    if ca_copy != ca_dir.join(CA_CERT_FILE) {
        let ca_pem = read_small_file(&ca_dir.join(CA_CERT_FILE))?;
        write_new(&ca_copy, &ca_pem, false)?;
        written.push(ca_copy);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_as_a_node_tls_config() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        create_node_cert(dir.path(), dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        NodeTls::load(dir.path()).unwrap();
        client_config(&dir.path().join(CA_CERT_FILE)).unwrap();
        assert!(create_ca(dir.path()).is_err(), "never overwrites a CA");
    }

    #[test]
    fn loopback_detection() {
        for listen in ["127.0.0.1:7001", "localhost:1", "[::1]:7001", "127.9.9.9:80"] {
            assert!(is_loopback(listen), "{listen}");
        }
        for listen in ["0.0.0.0:7001", "10.0.0.1:7001", "[::]:7001", "example.com:7001"] {
            assert!(!is_loopback(listen), "{listen}");
        }
    }

    #[test]
    fn credentials_compare_whole() {
        assert!(credential_matches(b"secret-secret-16", b"secret-secret-16"));
        assert!(!credential_matches(b"secret-secret-1", b"secret-secret-16"));
        assert!(!credential_matches(b"", b"secret-secret-16"));
        let tokens = vec!["alpha".to_string(), "beta".to_string()];
        assert!(token_matches(b"beta", &tokens));
        assert!(!token_matches(b"bet", &tokens));
        assert!(check_secret("").is_err());
        assert!(check_secret("short").is_err());
    }
}
