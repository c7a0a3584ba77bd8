//! Span blocks: how the trace store keeps spans (migration 0005). Each reported batch of one
//! proxy is stored as one row of `span_blocks`: its spans encoded together (protobuf
//! `quiver.v1.Span`, repeated) plus a summary that lets a read skip the block without
//! decoding it — start-time range, the services it holds, how many spans errored, the
//! longest duration, and a Bloom filter of its trace ids.
//!
//! Why: a span stored as a row with four index entries cost the control plane 5-10 us of CPU
//! (random index pages, per-row SQL work); a block costs one row per batch and the encoding,
//! well under 1 us per span. Reads pay instead: GetTrace probes every block's Bloom filter
//! and decodes the few that may hold the trace; a search decodes the blocks whose summary
//! matches, newest first. See docs/observability.md, "How it is stored".
//!
//! Nothing here touches SQL; [`super::telemetry`] moves blocks in and out.

use std::collections::{BTreeSet, HashMap, HashSet};

use prost::Message;
use quiver_api::v1;

use super::StoreError;
use super::telemetry::{SpanRecord, TelemetryStore, TraceQuery};

/// Bits per trace id in a block's Bloom filter, and probes per id: about 1% false
/// positives (a false positive costs one needless block decode).
const BLOOM_BITS_PER_ID: usize = 10;
const BLOOM_PROBES: u32 = 7;

/// The encoded body: the spans of one block, without the fields the block row holds once
/// (namespace, reporter).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredSpans {
    #[prost(message, repeated, tag = "1")]
    spans: Vec<v1::Span>,
}

/// A block ready to be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlock {
    pub namespace: String,
    pub reporter: String,
    pub start_min: i64,
    pub start_max: i64,
    pub spans: i64,
    pub errors: i64,
    pub max_duration_ns: i64,
    /// The distinct services of its spans, sorted, one per line.
    pub services: String,
    /// Identifies the batch (reporter and every trace and span id, in order): a batch sent
    /// twice has the same digest and is stored once.
    pub digest: Vec<u8>,
    pub bloom: Vec<u8>,
    pub body: Vec<u8>,
}

/// What a search reads of a block before deciding to decode it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BlockSummary {
    pub id: i64,
    pub namespace: String,
    pub start_min: i64,
    pub start_max: i64,
    pub errors: i64,
    pub max_duration_ns: i64,
    pub services: String,
    pub bloom: Vec<u8>,
}

impl BlockSummary {
    /// Whether the block may hold a span of `service` (None: any).
    pub fn may_hold_service(&self, service: Option<&str>) -> bool {
        service.is_none_or(|s| self.services.split('\n').any(|x| x == s))
    }
}

/// A block's body as read back, with the row fields a span needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlockBody {
    pub id: i64,
    pub namespace: String,
    pub reporter: String,
    pub body: Vec<u8>,
}

/// Group checked spans into blocks, one per (namespace, reporter) in order of first
/// appearance; a proxy's batch has one of each, so it becomes one block.
pub fn blocks_of(spans: Vec<SpanRecord>) -> Vec<NewBlock> {
    let mut groups: Vec<((String, String), Vec<SpanRecord>)> = Vec::new();
    for s in spans {
        match groups
            .iter_mut()
            .find(|((ns, r), _)| *ns == s.namespace && *r == s.reporter)
        {
            Some((_, v)) => v.push(s),
            None => groups.push(((s.namespace.clone(), s.reporter.clone()), vec![s])),
        }
    }
    groups
        .into_iter()
        .map(|((namespace, reporter), spans)| encode(namespace, reporter, spans))
        .collect()
}

fn encode(namespace: String, reporter: String, spans: Vec<SpanRecord>) -> NewBlock {
    let mut bloom = Bloom::with_capacity(spans.len());
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(reporter.as_bytes());
    let mut services = BTreeSet::new();
    let (mut start_min, mut start_max, mut errors, mut max_duration_ns) = (i64::MAX, i64::MIN, 0, 0);
    let mut body = StoredSpans {
        spans: Vec::with_capacity(spans.len()),
    };
    for s in spans {
        bloom.insert(&s.trace_id);
        digest.update(b"\n");
        digest.update(s.trace_id.as_bytes());
        digest.update(s.span_id.as_bytes());
        start_min = start_min.min(s.start_ns);
        start_max = start_max.max(s.start_ns);
        errors += i64::from(s.is_error);
        max_duration_ns = max_duration_ns.max(s.duration_ns);
        if !services.contains(s.service.as_str()) {
            services.insert(s.service.clone());
        }
        body.spans.push(v1::Span {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            kind: s.kind,
            // The row holds it once.
            namespace: String::new(),
            service: s.service,
            peer_service: s.peer_service,
            peer_identity: s.peer_identity,
            name: s.name,
            route: s.route,
            start_unix_nanos: s.start_ns,
            duration_nanos: s.duration_ns,
            status_code: u32::try_from(s.status_code).unwrap_or(0),
            error: s.error,
            attempt: u32::try_from(s.attempt).unwrap_or(0),
            request_bytes: u64::try_from(s.request_bytes).unwrap_or(0),
            response_bytes: u64::try_from(s.response_bytes).unwrap_or(0),
            quic_connection_id: s.quic_connection_id,
            endpoint: s.endpoint,
        });
    }
    NewBlock {
        namespace,
        reporter,
        start_min,
        start_max,
        spans: body.spans.len() as i64,
        errors,
        max_duration_ns,
        services: services.into_iter().collect::<Vec<_>>().join("\n"),
        digest: digest.finish().as_ref().to_vec(),
        bloom: bloom.into_bytes(),
        body: body.encode_to_vec(),
    }
}

/// The spans of a stored block. A body that does not decode (damaged on disk) is an error for
/// the caller to report; it never panics.
pub fn decode(block: BlockBody) -> Result<Vec<SpanRecord>, prost::DecodeError> {
    let stored = StoredSpans::decode(block.body.as_slice())?;
    Ok(stored
        .spans
        .into_iter()
        .map(|s| SpanRecord {
            is_error: s.status_code >= 500 || !s.error.is_empty(),
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            kind: s.kind,
            namespace: block.namespace.clone(),
            service: s.service,
            peer_service: s.peer_service,
            peer_identity: s.peer_identity,
            name: s.name,
            route: s.route,
            start_ns: s.start_unix_nanos,
            duration_ns: s.duration_nanos,
            status_code: i32::try_from(s.status_code).unwrap_or(0),
            error: s.error,
            attempt: i32::try_from(s.attempt).unwrap_or(i32::MAX),
            request_bytes: i64::try_from(s.request_bytes).unwrap_or(i64::MAX),
            response_bytes: i64::try_from(s.response_bytes).unwrap_or(i64::MAX),
            quic_connection_id: s.quic_connection_id,
            endpoint: s.endpoint,
            reporter: block.reporter.clone(),
        })
        .collect())
}

/// A Bloom filter of trace ids, stored as its bit array (length a multiple of 8 bytes).
pub struct Bloom {
    bits: Vec<u8>,
}

impl Bloom {
    pub fn with_capacity(ids: usize) -> Self {
        let bytes = (ids.max(1) * BLOOM_BITS_PER_ID).div_ceil(64) * 8;
        Self {
            bits: vec![0; bytes],
        }
    }

    pub fn insert(&mut self, trace_id: &str) {
        let m = self.bits.len() as u64 * 8;
        for bit in probes(trace_id, m) {
            self.bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bits
    }
}

/// Whether a stored Bloom filter may contain `trace_id` (false: certainly not). An empty or
/// damaged filter answers "may", so a damaged row costs a decode, never a lost span.
pub fn may_contain(bits: &[u8], trace_id: &str) -> bool {
    if bits.is_empty() {
        return true;
    }
    let m = bits.len() as u64 * 8;
    probes(trace_id, m).all(|bit| bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
}

/// Bit positions for `trace_id` in a filter of `m` bits: double hashing over a mix of the
/// id's bytes (ids are random, but B3 64-bit ids have a zero upper half, and a proxy may send
/// any hex, so the id is mixed rather than used as is).
fn probes(trace_id: &str, m: u64) -> impl Iterator<Item = u64> {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for b in trace_id.bytes() {
        h = mix(h ^ u64::from(b));
    }
    let h1 = h;
    let h2 = mix(h) | 1;
    (0..u64::from(BLOOM_PROBES)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Spans per block when spans stored before migration 0005 are moved into blocks (a
/// proxy's full batch).
pub const LEGACY_BLOCK_SPANS: usize = 256;

/// Blocks whose bodies are read per query, at most (bound parameters per statement).
const BODIES_PER_READ: usize = 64;
/// Candidate traces times blocks above which a search filter reads every block that may
/// hold a matching span once, instead of probing Bloom filters per candidate.
const PROBE_LIMIT: usize = 200_000;

/// The spans of `trace_ids`, every stored one once (a span sent in two batches is stored in
/// both blocks), ordered by start then span id.
pub async fn spans_of_traces<S: TelemetryStore + ?Sized>(
    store: &S,
    trace_ids: &[String],
) -> Result<Vec<SpanRecord>, StoreError> {
    if trace_ids.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: HashSet<&str> = trace_ids.iter().map(String::as_str).collect();
    let ids: Vec<i64> = store
        .span_block_blooms()
        .await?
        .into_iter()
        .filter(|(_, bloom)| wanted.iter().any(|t| may_contain(bloom, t)))
        .map(|(id, _)| id)
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for chunk in ids.chunks(BODIES_PER_READ) {
        for block in store.span_block_bodies(chunk).await? {
            for s in decode_checked(block) {
                if wanted.contains(s.trace_id.as_str())
                    && seen.insert((s.trace_id.clone(), s.span_id.clone()))
                {
                    out.push(s);
                }
            }
        }
    }
    out.sort_by(|a, b| (a.start_ns, &a.span_id).cmp(&(b.start_ns, &b.span_id)));
    Ok(out)
}

/// A block's spans; a body that does not decode (damaged on disk) is logged and read as
/// empty, so one bad row cannot make every search fail.
fn decode_checked(block: BlockBody) -> Vec<SpanRecord> {
    let id = block.id;
    decode(block).unwrap_or_else(|e| {
        tracing::error!(block = id, error = %e, "a stored span block does not decode; skipped");
        Vec::new()
    })
}

/// A condition of a search, on one span that started in the search's time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    /// Of the service and namespace asked for (either may be absent: any).
    Service,
    /// Errored (5xx or a proxy-made error).
    Error,
    /// At least the minimum duration long.
    Duration,
}

impl Condition {
    fn span(self, q: &TraceQuery, s: &SpanRecord) -> bool {
        (q.start_ns..q.end_ns).contains(&s.start_ns)
            && match self {
                Condition::Service => {
                    q.service.as_deref().is_none_or(|x| s.service == x)
                        && q.namespace.as_deref().is_none_or(|x| s.namespace == x)
                }
                Condition::Error => s.is_error,
                Condition::Duration => q.min_duration_ns.is_none_or(|m| s.duration_ns >= m),
            }
    }

    /// Whether a block may hold a span meeting it (false: certainly not).
    fn block(self, q: &TraceQuery, b: &BlockSummary) -> bool {
        match self {
            Condition::Service => {
                b.may_hold_service(q.service.as_deref())
                    && q.namespace.as_deref().is_none_or(|x| b.namespace == x)
            }
            Condition::Error => b.errors > 0,
            Condition::Duration => q.min_duration_ns.is_none_or(|m| b.max_duration_ns >= m),
        }
    }
}

/// Ids of traces matching `q`, newest first; see [`TelemetryStore::search_traces`].
///
/// The key condition (errored spans with `errors_only`, else spans of the service) orders
/// the result: a trace's key is its newest span meeting it. The other conditions only
/// filter. Blocks that may hold key spans are read newest first; each new candidate is
/// checked against the filters (Bloom probes, then the few blocks that may hold it); the
/// scan stops once `limit` matching traces have keys newer than anything left unread.
pub async fn search_traces<S: TelemetryStore + ?Sized>(
    store: &S,
    q: &TraceQuery,
) -> Result<Vec<String>, StoreError> {
    let limit = usize::try_from(q.limit).unwrap_or(0);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let (key, mut filters) = if q.errors_only {
        (Condition::Error, vec![Condition::Service])
    } else {
        (Condition::Service, vec![])
    };
    if q.min_duration_ns.is_some() {
        filters.push(Condition::Duration);
    }
    if q.errors_only && q.service.is_none() && q.namespace.is_none() {
        filters.retain(|f| *f != Condition::Service);
    }
    // Newest first (by latest start).
    let summaries = store.span_block_summaries(q.start_ns, q.end_ns).await?;
    let key_blocks: Vec<&BlockSummary> =
        summaries.iter().filter(|b| key.block(q, b)).collect();
    let mut decoded: HashMap<i64, Vec<SpanRecord>> = HashMap::new();
    let mut keys: HashMap<String, i64> = HashMap::new();
    // Per trace: Some(true) matches every filter, Some(false) fails one.
    let mut verdict: HashMap<String, bool> = HashMap::new();
    // Per filter: every trace meeting it, once a filter was checked by reading all its blocks.
    let mut met_all: HashMap<usize, HashSet<String>> = HashMap::new();
    for (i, chunk) in key_blocks.chunks(BODIES_PER_READ / 4).enumerate() {
        let ids: Vec<i64> = chunk.iter().map(|b| b.id).collect();
        read_blocks(store, &ids, &mut decoded).await?;
        let mut new = Vec::new();
        for id in &ids {
            for s in decoded.get(id).into_iter().flatten() {
                if !key.span(q, s) {
                    continue;
                }
                let k = keys.entry(s.trace_id.clone()).or_insert(i64::MIN);
                if *k == i64::MIN {
                    new.push(s.trace_id.clone());
                }
                *k = (*k).max(s.start_ns);
            }
        }
        let mut pending: Vec<String> = new;
        for (f, filter) in filters.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let blocks: Vec<&BlockSummary> =
                summaries.iter().filter(|b| filter.block(q, b)).collect();
            let whole = met_all.contains_key(&f) || pending.len() * blocks.len() > PROBE_LIMIT;
            if whole && !met_all.contains_key(&f) {
                let all = meeting(store, q, *filter, &blocks, None, &mut decoded).await?;
                met_all.insert(f, all);
            }
            let probed;
            let met = if whole {
                &met_all[&f]
            } else {
                probed = meeting(store, q, *filter, &blocks, Some(&pending), &mut decoded).await?;
                &probed
            };
            pending.retain(|t| {
                let ok = met.contains(t);
                if !ok {
                    verdict.insert(t.clone(), false);
                }
                ok
            });
        }
        for t in pending {
            verdict.insert(t, true);
        }
        // Keep memory to the blocks still useful: key blocks already read are done.
        for id in &ids {
            decoded.remove(id);
        }
        let mut matched: Vec<i64> = verdict
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(t, _)| keys[t])
            .collect();
        if matched.len() >= limit {
            matched.select_nth_unstable_by(limit - 1, |a, b| b.cmp(a));
            let kth = matched[limit - 1];
            let next = (i + 1) * (BODIES_PER_READ / 4);
            if key_blocks.get(next).is_none_or(|b| b.start_max < kth) {
                break;
            }
        }
    }
    let mut matched: Vec<(i64, String)> = verdict
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| (keys[&t], t))
        .collect();
    matched.sort_by(|a, b| b.cmp(a));
    matched.truncate(limit);
    Ok(matched.into_iter().map(|(_, t)| t).collect())
}

/// Traces (of `only`, or any) that have a span meeting `condition` in `blocks`.
async fn meeting<S: TelemetryStore + ?Sized>(
    store: &S,
    q: &TraceQuery,
    condition: Condition,
    blocks: &[&BlockSummary],
    only: Option<&[String]>,
    decoded: &mut HashMap<i64, Vec<SpanRecord>>,
) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<i64> = blocks
        .iter()
        .filter(|b| only.is_none_or(|ts| ts.iter().any(|t| may_contain(&b.bloom, t))))
        .map(|b| b.id)
        .collect();
    let wanted: Option<HashSet<&str>> = only.map(|ts| ts.iter().map(String::as_str).collect());
    let mut met = HashSet::new();
    for chunk in ids.chunks(BODIES_PER_READ) {
        let missing: Vec<i64> = chunk
            .iter()
            .copied()
            .filter(|id| !decoded.contains_key(id))
            .collect();
        // Filter blocks are kept only while small; a full pass reads and drops as it goes.
        let mut scratch = HashMap::new();
        let target = if only.is_some() {
            &mut *decoded
        } else {
            &mut scratch
        };
        read_blocks(store, &missing, target).await?;
        for id in chunk {
            let spans = decoded.get(id).or_else(|| scratch.get(id));
            for s in spans.into_iter().flatten() {
                if condition.span(q, s)
                    && wanted.as_ref().is_none_or(|w| w.contains(s.trace_id.as_str()))
                {
                    met.insert(s.trace_id.clone());
                }
            }
        }
    }
    Ok(met)
}

async fn read_blocks<S: TelemetryStore + ?Sized>(
    store: &S,
    ids: &[i64],
    into: &mut HashMap<i64, Vec<SpanRecord>>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    for block in store.span_block_bodies(ids).await? {
        let id = block.id;
        into.insert(id, decode_checked(block));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u32, span: u32, service: &str, start_ns: i64) -> SpanRecord {
        SpanRecord {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{span:016x}"),
            parent_span_id: String::new(),
            kind: "SERVER".into(),
            namespace: "shop".into(),
            service: service.into(),
            peer_service: "web".into(),
            peer_identity: "spiffe://mesh.local/ns/shop/sa/web".into(),
            name: "GET /items".into(),
            route: "items".into(),
            start_ns,
            duration_ns: 1_000 * i64::from(span),
            status_code: 200,
            error: String::new(),
            is_error: false,
            attempt: 1,
            request_bytes: 10,
            response_bytes: 20,
            quic_connection_id: "00112233aabbccdd".into(),
            endpoint: "10.0.0.1:80".into(),
            reporter: "spiffe://mesh.local/ns/shop/sa/catalog".into(),
        }
    }

    #[test]
    fn a_block_round_trips_and_summarises_its_spans() {
        let mut failed = span(2, 9, "ratings", 300);
        failed.status_code = 503;
        failed.is_error = true;
        let spans = vec![span(1, 1, "catalog", 200), failed, span(1, 2, "catalog", 100)];
        let blocks = blocks_of(spans.clone());
        assert_eq!(blocks.len(), 1);
        let b = &blocks[0];
        assert_eq!((b.start_min, b.start_max, b.spans), (100, 300, 3));
        assert_eq!((b.errors, b.max_duration_ns), (1, 9_000));
        assert_eq!(b.services, "catalog\nratings");
        for s in &spans {
            assert!(may_contain(&b.bloom, &s.trace_id));
        }
        let back = decode(BlockBody {
            id: 1,
            namespace: b.namespace.clone(),
            reporter: b.reporter.clone(),
            body: b.body.clone(),
        })
        .unwrap();
        assert_eq!(back, spans, "every field comes back");
    }

    #[test]
    fn the_digest_names_the_batch_and_groups_follow_the_reporter() {
        let a = blocks_of(vec![span(1, 1, "a", 1), span(1, 2, "a", 2)]);
        let again = blocks_of(vec![span(1, 1, "a", 1), span(1, 2, "a", 2)]);
        let other = blocks_of(vec![span(1, 1, "a", 1), span(1, 3, "a", 2)]);
        assert_eq!(a[0].digest, again[0].digest);
        assert_ne!(a[0].digest, other[0].digest);
        let mut foreign = span(3, 1, "a", 3);
        foreign.reporter = "spiffe://mesh.local/ns/shop/sa/other".into();
        let two = blocks_of(vec![span(1, 1, "a", 1), foreign, span(1, 2, "a", 2)]);
        assert_eq!(two.iter().map(|b| b.spans).collect::<Vec<_>>(), [2, 1]);
        assert_ne!(two[0].digest, two[1].digest);
    }

    #[test]
    fn the_bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let ids: Vec<String> = (0..256u64).map(|i| format!("{:032x}", mix(i))).collect();
        let mut bloom = Bloom::with_capacity(ids.len());
        for id in &ids {
            bloom.insert(id);
        }
        let bits = bloom.into_bytes();
        assert!(ids.iter().all(|id| may_contain(&bits, id)));
        let false_positives = (1_000..11_000u64)
            .filter(|i| may_contain(&bits, &format!("{:032x}", mix(*i))))
            .count();
        assert!(false_positives < 300, "{false_positives} of 10000");
        // B3's 64-bit ids (upper half zero) spread as well.
        let mut b3 = Bloom::with_capacity(256);
        for i in 0..256u64 {
            b3.insert(&format!("{:032x}", i));
        }
        let bits = b3.into_bytes();
        let fp = (1_000..11_000u64)
            .filter(|i| may_contain(&bits, &format!("{i:032x}")))
            .count();
        assert!(fp < 300, "{fp} of 10000");
        assert!(may_contain(&[], "anything"), "no filter: may");
    }

    #[test]
    fn a_damaged_body_is_an_error() {
        let bad = BlockBody {
            id: 1,
            namespace: String::new(),
            reporter: String::new(),
            body: vec![0xff, 0xff, 0xff],
        };
        assert!(decode(bad).is_err());
    }
}
