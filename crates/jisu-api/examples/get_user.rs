//! Another Rust service calling Jisu with nothing but `jisu-api` and tonic: mutual TLS from
//! a certificates directory, a bearer token, a deadline, one GetUser.
//!
//! ```sh
//! JISU_TOKEN=$(jisu token issue --sub alice --scope users:read) \
//!   cargo run -p jisu-api --example get_user -- https://localhost:50051 certs USER0001
//! ```
use std::time::Duration;

use jisu_api::pb::{GetUserRequest, user_service_client::UserServiceClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "https://localhost:50051".into());
    let certs = std::path::PathBuf::from(args.next().unwrap_or_else(|| "certs".into()));
    let user_id = args.next().unwrap_or_else(|| "USER0001".into());
    let token = std::env::var("JISU_TOKEN").map_err(|_| "set JISU_TOKEN (jisu token issue)")?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?))
        .identity(Identity::from_pem(
            std::fs::read(certs.join("client.pem"))?,
            std::fs::read(certs.join("client.key"))?,
        ));
    let channel = Endpoint::from_shared(endpoint)?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut users = UserServiceClient::new(channel);
    let mut request = tonic::Request::new(GetUserRequest { user_id });
    request.set_timeout(Duration::from_secs(5));
    request
        .metadata_mut()
        .insert(jisu_api::AUTHORIZATION, format!("Bearer {token}").parse()?);
    match users.get_user(request).await {
        Ok(reply) => println!("{:?}", reply.into_inner()),
        Err(status) => {
            let trace = status
                .metadata()
                .get(jisu_api::TRACE_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            eprintln!("{:?}: {} (trace {trace})", status.code(), status.message());
        }
    }
    Ok(())
}
