//! The internal DNS (hickory-server with our own [`RequestHandler`]), UDP and TCP.
//!
//! Authoritative for the zone: `<record>.<zone>` A/AAAA from the static records;
//! `<name>.<zone>` A/AAAA of the *healthy* members of the mapped balancer service, rotated
//! per answer; `_<name>._tcp.<zone>` SRV (target `<member>.<zone>`, the service port, the
//! member's address as additional data); SOA at the apex; NXDOMAIN (with the SOA) for other
//! names in the zone. Names outside the zone are forwarded over UDP to the upstreams in
//! order, or REFUSED when there are none. The zone is rebuilt on reload; health is read live.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::Gate;
use crate::config::{DnsConfig, GateConfig};
use crate::error::GateError;

/// How long a TCP DNS connection may sit without sending a query.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// The zone as answered, rebuilt on every (re)load.
pub struct Zone {
    pub origin: LowerName,
    origin_name: Name,
    ttl: u32,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
    statics: HashMap<LowerName, Vec<IpAddr>>,
    /// DNS name → balancer service.
    services: HashMap<LowerName, String>,
    /// `_name._tcp` → balancer service.
    srv: HashMap<LowerName, String>,
    soa: Record,
}

fn name_in(label: &str, origin: &Name) -> Result<Name, GateError> {
    Name::from_ascii(label)
        .and_then(|n| n.append_domain(origin))
        .map_err(|e| GateError::Config(format!("dns name {label:?}: {e}")))
}

impl Zone {
    pub fn build(d: &DnsConfig) -> Result<Self, GateError> {
        let mut origin_name = Name::from_ascii(&d.zone)
            .map_err(|e| GateError::Config(format!("dns zone {:?}: {e}", d.zone)))?;
        origin_name.set_fqdn(true);
        let mut statics: HashMap<LowerName, Vec<IpAddr>> = HashMap::new();
        for r in &d.records {
            statics
                .entry(LowerName::new(&name_in(&r.name, &origin_name)?))
                .or_default()
                .push(r.address);
        }
        let mut services = HashMap::new();
        let mut srv = HashMap::new();
        for s in &d.services {
            services.insert(
                LowerName::new(&name_in(&s.name, &origin_name)?),
                s.service.clone(),
            );
            srv.insert(
                LowerName::new(&name_in(&format!("_{}._tcp", s.name), &origin_name)?),
                s.service.clone(),
            );
        }
        let mname = name_in("gate", &origin_name)?;
        let rname = name_in("hostmaster", &origin_name)?;
        let soa = Record::from_rdata(
            origin_name.clone(),
            d.ttl,
            RData::SOA(SOA::new(mname, rname, 1, 60, 30, 600, d.ttl)),
        );
        Ok(Self {
            origin: LowerName::new(&origin_name),
            origin_name,
            ttl: d.ttl,
            upstreams: d.upstreams.clone(),
            upstream_timeout: Duration::from_millis(d.upstream_timeout_ms),
            statics,
            services,
            srv,
            soa,
        })
    }
}

pub fn zone_of(cfg: &GateConfig) -> Result<Option<Arc<Zone>>, GateError> {
    cfg.dns
        .as_ref()
        .map(|d| Zone::build(d).map(Arc::new))
        .transpose()
}

pub struct Handler {
    gate: Arc<Gate>,
}

impl Handler {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { gate }
    }
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

fn wanted(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)) | (RecordType::ANY, _)
    )
}

enum Answer {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NxDomain,
}

impl Handler {
    fn lookup(&self, zone: &Zone, qname: &LowerName, orig: &Name, qtype: RecordType) -> Answer {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if qname == &zone.origin {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                answers.push(zone.soa.clone());
            }
            return Answer::Records {
                answers,
                additionals,
            };
        }
        if let Some(ips) = zone.statics.get(qname) {
            answers.extend(
                ips.iter()
                    .filter(|ip| wanted(qtype, ip))
                    .map(|ip| addr_record(orig, zone.ttl, *ip)),
            );
            return Answer::Records {
                answers,
                additionals,
            };
        }
        let rt = self.gate.runtime.load();
        if let Some(svc) = zone.services.get(qname) {
            if let Some(s) = rt.services.get(svc) {
                answers.extend(
                    s.answerable_rotated()
                        .iter()
                        .filter(|m| wanted(qtype, &m.addr.ip()))
                        .map(|m| addr_record(orig, zone.ttl, m.addr.ip())),
                );
            }
            return Answer::Records {
                answers,
                additionals,
            };
        }
        if let Some(svc) = zone.srv.get(qname) {
            if let Some(s) = rt.services.get(svc)
                && matches!(qtype, RecordType::SRV | RecordType::ANY)
            {
                for m in s.answerable_rotated() {
                    let Ok(target) = name_in(&m.name, &zone.origin_name) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        orig.clone(),
                        zone.ttl,
                        RData::SRV(SRV::new(10, 10, m.addr.port(), target.clone())),
                    ));
                    additionals.push(addr_record(&target, zone.ttl, m.addr.ip()));
                }
            }
            return Answer::Records {
                answers,
                additionals,
            };
        }
        Answer::NxDomain
    }

    /// Relays the raw query to the upstreams in order; the first parseable answer wins.
    async fn forward(&self, zone: &Zone, raw: &[u8]) -> Option<hickory_proto::op::Message> {
        for up in &zone.upstreams {
            let bind: SocketAddr = if up.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.connect(up).await.is_err() || sock.send(raw).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(zone.upstream_timeout, sock.recv(&mut buf)).await
                && let Ok(msg) = hickory_proto::op::Message::from_vec(&buf[..n])
            {
                return Some(msg);
            }
        }
        None
    }

    fn count(&self, rcode: ResponseCode) {
        let code = match rcode {
            ResponseCode::NoError => "noerror".to_string(),
            ResponseCode::FormErr => "formerr".to_string(),
            ResponseCode::ServFail => "servfail".to_string(),
            ResponseCode::NXDomain => "nxdomain".to_string(),
            ResponseCode::NotImp => "notimp".to_string(),
            ResponseCode::Refused => "refused".to_string(),
            other => u16::from(other).to_string(),
        };
        self.gate
            .metrics
            .inc("gate_dns_queries_total", &[("rcode", &code)], 1);
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut rh: R,
    ) -> ResponseInfo {
        let builder = || MessageResponseBuilder::new(&request.queries, request.edns.as_ref());
        let reply_err = |code: ResponseCode| builder().error_msg(&request.metadata, code);
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            })
        };
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                self.count(ResponseCode::FormErr);
                return rh
                    .send_response(reply_err(ResponseCode::FormErr))
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::FormErr));
            }
        };
        if request.metadata.op_code != OpCode::Query {
            self.count(ResponseCode::NotImp);
            return rh
                .send_response(reply_err(ResponseCode::NotImp))
                .await
                .unwrap_or_else(|_| fail(ResponseCode::NotImp));
        }
        let Some(zone) = self.gate.dns_zone() else {
            self.count(ResponseCode::Refused);
            return rh
                .send_response(reply_err(ResponseCode::Refused))
                .await
                .unwrap_or_else(|_| fail(ResponseCode::Refused));
        };
        let qname = info.query.name();
        if !zone.origin.zone_of(qname) {
            if zone.upstreams.is_empty() {
                self.count(ResponseCode::Refused);
                return rh
                    .send_response(reply_err(ResponseCode::Refused))
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::Refused));
            }
            return match self.forward(&zone, request.as_slice()).await {
                Some(up) => {
                    let mut meta = up.metadata;
                    meta.id = request.metadata.id;
                    self.count(meta.response_code);
                    let resp = builder().build(
                        meta,
                        up.answers.iter(),
                        up.authorities.iter(),
                        std::iter::empty(),
                        up.additionals.iter(),
                    );
                    rh.send_response(resp)
                        .await
                        .unwrap_or_else(|_| fail(ResponseCode::ServFail))
                }
                None => {
                    self.count(ResponseCode::ServFail);
                    rh.send_response(reply_err(ResponseCode::ServFail))
                        .await
                        .unwrap_or_else(|_| fail(ResponseCode::ServFail))
                }
            };
        }
        let orig = info.query.original().name().clone();
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let none: Vec<Record> = Vec::new();
        match self.lookup(&zone, qname, &orig, info.query.query_type()) {
            Answer::Records {
                answers,
                additionals,
            } => {
                self.count(ResponseCode::NoError);
                let soa = if answers.is_empty() {
                    std::slice::from_ref(&zone.soa)
                } else {
                    &none[..]
                };
                let resp = builder().build(
                    meta,
                    answers.iter(),
                    soa.iter(),
                    std::iter::empty(),
                    additionals.iter(),
                );
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            Answer::NxDomain => {
                self.count(ResponseCode::NXDomain);
                meta.response_code = ResponseCode::NXDomain;
                let resp = builder().build(
                    meta,
                    none.iter(),
                    std::iter::once(&zone.soa),
                    std::iter::empty(),
                    none.iter(),
                );
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
        }
    }
}

/// Owns the DNS server's tasks: dropping it stops them.
pub struct DnsHandle {
    _server: hickory_server::Server<Handler>,
}

/// Binds the DNS listeners (UDP and TCP on each address, with SO_REUSEPORT so that a reload
/// can bind the new set before the old one closes).
pub async fn start(gate: Arc<Gate>, cfg: &DnsConfig) -> Result<DnsHandle, GateError> {
    let mut server = hickory_server::Server::new(Handler { gate });
    for addr in &cfg.listen {
        let udp = crate::listeners::bind_udp(*addr)?;
        let tcp = crate::listeners::bind_tcp(*addr)?;
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64 * 1024);
        tracing::info!(%addr, zone = %cfg.zone, "dns listening (udp+tcp)");
    }
    Ok(DnsHandle { _server: server })
}
