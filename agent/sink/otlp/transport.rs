//! Sending one `ExportLogsServiceRequest` and reading the collector's answer: OTLP/gRPC through
//! tonic's generated `LogsServiceClient`, or OTLP/HTTP (protobuf) through a hyper HTTP/1.1
//! connection. Either way the answer is the collector's `ExportLogsServiceResponse`, or an error
//! message saying what went wrong in words.
//!
//! The HTTP client is hyper's low-level `client::conn::http1`, whose `client` feature reaches
//! hyper through tonic's `channel` feature: no HTTP client crate is added for one POST.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;
use tokio::net::TcpStream;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::{OtlpProtocol, OtlpSinkConfig, OtlpTlsConfig};

const USER_AGENT_VALUE: &str = concat!("meshtap/", env!("CARGO_PKG_VERSION"));

/// The OTLP/HTTP path for logs, appended to an endpoint given without a path.
const HTTP_LOGS_PATH: &str = "/v1/logs";

/// The protobuf content type of OTLP/HTTP requests and responses.
const PROTOBUF: &str = "application/x-protobuf";

/// A collector's answer is a few bytes; more than this is not an OTLP receiver talking.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A connection (lazy) to the collector, for one protocol.
pub(crate) enum Transport {
    Grpc(Grpc),
    Http(Http),
}

impl Transport {
    /// Prepares the connection; reads the TLS files. No network I/O: the first export connects.
    pub fn new(config: &OtlpSinkConfig) -> Result<Self, String> {
        let uri = config.endpoint_uri()?;
        match config.protocol {
            OtlpProtocol::Grpc => Grpc::new(config, &uri).map(Transport::Grpc),
            OtlpProtocol::HttpProtobuf => Ok(Transport::Http(Http::new(config, &uri))),
        }
    }

    /// Sends one request; `Ok` is the collector's answer to it.
    pub async fn export(
        &mut self,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        match self {
            Transport::Grpc(grpc) => grpc.export(request).await,
            Transport::Http(http) => http.export(request).await,
        }
    }

    /// Forgets the connection after an export was abandoned (timed out) half-way.
    pub fn reset(&mut self) {
        if let Transport::Http(http) = self {
            http.sender = None;
        }
    }
}

/// OTLP/gRPC over a tonic channel, which reconnects by itself after the collector went away.
pub(crate) struct Grpc {
    client: LogsServiceClient<Channel>,
    metadata: MetadataMap,
}

impl Grpc {
    fn new(config: &OtlpSinkConfig, uri: &Uri) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| format!("sink.endpoint {:?}: {}", config.endpoint, chain(&e)))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(USER_AGENT_VALUE)
            .map_err(|e| chain(&e))?;
        if uri.scheme_str() == Some("https") {
            let tls = tls_config(config.tls.as_ref())?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("invalid TLS settings: {}", chain(&e)))?;
        }
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            // Both were checked by `OtlpSinkConfig::validate`.
            let key = MetadataKey::from_bytes(name.as_bytes())
                .map_err(|_| format!("sink.headers: {name:?} is not valid gRPC metadata"))?;
            let value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| format!("sink.headers: the value of {name:?} is not valid"))?;
            metadata.insert(key, value);
        }
        Ok(Grpc {
            client: LogsServiceClient::new(endpoint.connect_lazy()),
            metadata,
        })
    }

    async fn export(
        &mut self,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = self.metadata.clone();
        match self.client.export(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(describe_status(&status)),
        }
    }
}

/// The collector's CA (or the system's roots) and the client identity, read from their files.
fn tls_config(tls: Option<&OtlpTlsConfig>) -> Result<ClientTlsConfig, String> {
    let default = OtlpTlsConfig::default();
    let tls = tls.unwrap_or(&default);
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read sink.tls.{field} {}: {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_file {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read("ca_file", ca)?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let identity = Identity::from_pem(read("cert_file", cert)?, read("key_file", key)?);
        config = config.identity(identity);
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// `Unavailable: tcp connect error: Connection refused (os error 111)`: the code, tonic's message
/// and the causes below it, leaving out repetitions and tonic's generic "transport error".
fn describe_status(status: &tonic::Status) -> String {
    let mut parts = vec![status.message().to_string()];
    let mut source = status.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    let mut text = format!("{:?}", status.code());
    for part in parts {
        if !part.is_empty() && part != "transport error" && !text.contains(&part) {
            text = format!("{text}: {part}");
        }
    }
    text
}

/// An error and its causes, `outer: inner: innermost`.
pub(crate) fn chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    message
}

/// OTLP/HTTP with protobuf bodies over one kept-alive HTTP/1.1 connection.
pub(crate) struct Http {
    /// Host (without IPv6 brackets) and port to connect to.
    host: String,
    port: u16,
    /// `Host:` header, and the path (and query) requests go to.
    authority: HeaderValue,
    path: String,
    headers: HeaderMap,
    /// The open connection; `None` before the first export and after a failure.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    fn new(config: &OtlpSinkConfig, uri: &Uri) -> Self {
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => HTTP_LOGS_PATH.to_string(),
            Some(path) => path.to_string(),
        };
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            // Both were checked by `OtlpSinkConfig::validate`.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        Http {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            path,
            headers,
            sender: None,
        }
    }

    async fn export(
        &mut self,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        let result = self.send(request).await;
        if result.is_err() {
            // The connection may be half-used: start afresh next time.
            self.sender = None;
        }
        result
    }

    async fn send(
        &mut self,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        let body = Bytes::from(request.encode_to_vec());
        let mut reused = true;
        if !matches!(&self.sender, Some(sender) if !sender.is_closed()) {
            self.sender = Some(self.connect_new().await?);
            reused = false;
        }
        let response = loop {
            let http_request = self.request(body.clone())?;
            let Some(sender) = self.sender.as_mut() else {
                unreachable!("connected above");
            };
            let sent = match sender.ready().await {
                Ok(()) => sender.send_request(http_request).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(response) => break response,
                // The collector closed the kept-alive connection (an idle timeout, a restart)
                // before answering: once more on a new connection, so that this is not a failed
                // delivery. Should it have taken the records before closing, they arrive twice,
                // as after any retry.
                Err(_) if reused => {
                    self.sender = Some(self.connect_new().await?);
                    reused = false;
                }
                Err(e) => return Err(format!("HTTP request failed: {}", chain(&e))),
            }
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read the response: {}", chain(&*e)))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(format!(
                "HTTP {}: {}",
                parts.status,
                error_detail(&parts.headers, &body)
            ));
        }
        ExportLogsServiceResponse::decode(body).map_err(|e| {
            format!(
                "HTTP {} with a body that is not an OTLP ExportLogsServiceResponse: {e}",
                parts.status
            )
        })
    }

    fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut request = Request::post(self.path.as_str())
            .header(HOST, self.authority.clone())
            .header(CONTENT_TYPE, PROTOBUF)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the HTTP request: {e}"))?;
        request.headers_mut().extend(self.headers.clone());
        Ok(request)
    }

    async fn connect_new(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {}", chain(&e)))?;
        // Drives the connection until the sender is dropped or the peer closes it.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "OTLP/HTTP connection ended");
            }
        });
        Ok(sender)
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error response (OTLP spec, "Failures").
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The collector's reason for an error status: `google.rpc.Status.message`, else the start of a
/// text body.
fn error_detail(headers: &HeaderMap, body: &Bytes) -> String {
    let protobuf = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROTOBUF.as_bytes()));
    if protobuf {
        if let Ok(status) = RpcStatus::decode(body.clone()) {
            if !status.message.is_empty() {
                return status.message;
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no details".to_string();
    }
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
