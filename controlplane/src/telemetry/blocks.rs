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
//! Nothing here touches SQL: the store ([`crate::store::Traces`]) keeps blocks as rows and
//! bytes, and this module is the only one that knows what is inside them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use prost::Message;
use quiver_api::v1;

use crate::store::{
    BlockBody, BlockSummary, EncodedBatch, NewBlock, SpanRecord, StoreError, Traces,
};

use super::ReportedBatch;

/// Bits per trace id in a block's Bloom filter, and probes per id: about 0.05% false
/// positives. A false positive costs one needless block decode, and a lookup probes every
/// block (4,000 at a million spans): about two needless decodes per lookup.
const BLOOM_BITS_PER_ID: usize = 16;
const BLOOM_PROBES: u32 = 11;

/// The encoded body: the spans of one block, without the fields the block row holds once
/// (namespace, reporter).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredSpans {
    #[prost(message, repeated, tag = "1")]
    spans: Vec<v1::Span>,
}

/// What SearchTraces asks the store for (already parsed and checked).
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub errors_only: bool,
    pub min_duration_ns: Option<i64>,
    /// Span start times in `[start_ns, end_ns)`.
    pub start_ns: i64,
    pub end_ns: i64,
    pub limit: i64,
}

/// Whether a block may hold a span of `service` (None: any); `services` is one per line.
fn may_hold_service(block: &BlockSummary, service: Option<&str>) -> bool {
    service.is_none_or(|s| block.services.split('\n').any(|x| x == s))
}

/// Encode checked batches for the store, each batch's spans as one block (a batch holds one
/// reporter's spans of one namespace; see [`blocks_of`]).
pub fn encode_batches(batches: Vec<ReportedBatch>) -> Vec<EncodedBatch> {
    batches
        .into_iter()
        .map(|b| EncodedBatch {
            blocks: blocks_of(b.spans),
            edges: b.edges,
        })
        .collect()
}

/// Spans stored before migration 0005, as batches of at most a proxy batch's size (so reads
/// decode no more per hit than for reported spans).
pub fn legacy_batches(spans: &[SpanRecord]) -> Vec<EncodedBatch> {
    spans
        .chunks(LEGACY_BLOCK_SPANS)
        .map(|c| EncodedBatch {
            blocks: blocks_of(c.to_vec()),
            edges: Vec::new(),
        })
        .collect()
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
    let (mut start_min, mut start_max, mut errors, mut max_duration_ns) =
        (i64::MAX, i64::MIN, 0, 0);
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
        let mut span = super::to_api(s);
        // The row holds it once.
        span.namespace = String::new();
        body.spans.push(span);
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
        .map(|s| super::to_record(s, block.namespace.clone(), block.reporter.clone()))
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
        for bit in TraceHash::of(trace_id).probes(m) {
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
    TraceHash::of(trace_id).in_filter(bits)
}

/// A trace id's hash pair for Bloom filters: computed once per lookup, probed against many.
#[derive(Debug, Clone, Copy)]
pub struct TraceHash(u64, u64);

impl TraceHash {
    /// A mix of the id's bytes (ids are random, but B3 64-bit ids have a zero upper half,
    /// and a proxy may send any hex, so the id is mixed rather than used as is).
    pub fn of(trace_id: &str) -> Self {
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for b in trace_id.bytes() {
            h = mix(h ^ u64::from(b));
        }
        Self(h, mix(h) | 1)
    }

    pub fn in_filter(self, bits: &[u8]) -> bool {
        if bits.is_empty() {
            return true;
        }
        let m = bits.len() as u64 * 8;
        self.probes(m)
            .all(|bit| bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// Bit positions in a filter of `m` bits (double hashing).
    fn probes(self, m: u64) -> impl Iterator<Item = u64> {
        let Self(h1, h2) = self;
        (0..u64::from(BLOOM_PROBES)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
    }
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

/// Blocks whose bodies are read per query (bound parameters per statement).
const BODIES_PER_READ: usize = 64;
/// Key blocks a search reads before it looks at what it found.
const KEY_CHUNK: usize = 16;
/// Decoded blocks a search keeps for reuse (~230 KB each at 256 spans).
const CACHE_BLOCKS: usize = 64;
/// Candidates a search checks one by one against a condition (Bloom probes, then the blocks
/// that may hold the trace) before it reads every block that may meet the condition once.
const PROBED_CANDIDATES: usize = 64;

/// The spans of `trace_ids`, every stored one once (a span sent in two batches is stored in
/// both blocks), ordered by start then span id.
pub async fn spans_of_traces<S: Traces + ?Sized>(
    store: &S,
    trace_ids: &[String],
) -> Result<Vec<SpanRecord>, StoreError> {
    if trace_ids.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: HashSet<&str> = trace_ids.iter().map(String::as_str).collect();
    let hashes: Vec<TraceHash> = wanted.iter().map(|t| TraceHash::of(t)).collect();
    let ids: Vec<i64> = store
        .span_block_blooms()
        .await?
        .into_iter()
        .filter(|(_, bloom)| hashes.iter().any(|h| h.in_filter(bloom)))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
                may_hold_service(b, q.service.as_deref())
                    && q.namespace.as_deref().is_none_or(|x| b.namespace == x)
            }
            Condition::Error => b.errors > 0,
            Condition::Duration => q.min_duration_ns.is_none_or(|m| b.max_duration_ns >= m),
        }
    }
}

/// Decoded blocks, read through the store and kept (the newest [`CACHE_BLOCKS`]) while one
/// search runs.
struct Blocks<'s, S: ?Sized> {
    store: &'s S,
    decoded: HashMap<i64, Arc<Vec<SpanRecord>>>,
    order: VecDeque<i64>,
}

impl<'s, S: Traces + ?Sized> Blocks<'s, S> {
    fn new(store: &'s S) -> Self {
        Self {
            store,
            decoded: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The spans of each of `ids` (in that order; a block deleted meanwhile has none).
    async fn get(&mut self, ids: &[i64]) -> Result<Vec<Arc<Vec<SpanRecord>>>, StoreError> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.decoded.contains_key(id))
            .collect();
        let mut fresh = HashMap::new();
        for chunk in missing.chunks(BODIES_PER_READ) {
            for block in self.store.span_block_bodies(chunk).await? {
                let id = block.id;
                fresh.insert(id, Arc::new(decode_checked(block)));
            }
        }
        let out = ids
            .iter()
            .map(|id| {
                self.decoded
                    .get(id)
                    .or_else(|| fresh.get(id))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        for (id, spans) in fresh {
            self.decoded.insert(id, spans);
            self.order.push_back(id);
            if self.order.len() > CACHE_BLOCKS
                && let Some(old) = self.order.pop_front()
            {
                self.decoded.remove(&old);
            }
        }
        Ok(out)
    }
}

/// Ids of traces matching `q`, the one with the newest key span first. Conditions apply
/// to spans that started in `[q.start_ns, q.end_ns)`: with `errors_only` a trace needs an
/// errored span (its key spans) and, when a service or namespace is given, a span of it;
/// without, a span of the service and namespace asked for (key spans; any span when none
/// is given); with `min_duration_ns`, also a span at least that long.
///
/// The key condition (errored spans with `errors_only`, else spans of the service) orders
/// the result: a trace's key is its newest span meeting it. The other conditions only
/// filter. Blocks that may hold key spans are read newest first, [`KEY_CHUNK`] at a time.
/// A candidate whose key is newer than every block still unread has its final key; those
/// are checked against the filters newest first, and the search ends once `limit` of them
/// match (nothing unread can rank above them).
pub async fn search_traces<S: Traces + ?Sized>(
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
    if q.errors_only && q.service.is_none() && q.namespace.is_none() {
        filters.clear();
    }
    if q.min_duration_ns.is_some() {
        filters.push(Condition::Duration);
    }
    // Newest first (by latest start).
    let summaries = store.span_block_summaries(q.start_ns, q.end_ns).await?;
    let key_blocks: Vec<&BlockSummary> = summaries.iter().filter(|b| key.block(q, b)).collect();
    let mut blocks = Blocks::new(store);
    let mut check = Filters {
        q,
        summaries: &summaries,
        probed: HashMap::new(),
        met_all: HashMap::new(),
    };
    let mut keys: HashMap<String, i64> = HashMap::new();
    let mut matched: Vec<(i64, String)> = Vec::new();
    let mut checked: HashSet<String> = HashSet::new();
    for (n, chunk) in key_blocks.chunks(KEY_CHUNK).enumerate() {
        let ids: Vec<i64> = chunk.iter().map(|b| b.id).collect();
        for spans in blocks.get(&ids).await? {
            for s in spans.iter().filter(|s| key.span(q, s)) {
                let k = keys.entry(s.trace_id.clone()).or_insert(s.start_ns);
                *k = (*k).max(s.start_ns);
            }
        }
        // Spans in blocks not read yet started no later than this.
        let unread_max = key_blocks
            .get((n + 1) * KEY_CHUNK)
            .map_or(i64::MIN, |b| b.start_max);
        let mut ready: Vec<(i64, &String)> = keys
            .iter()
            .filter(|(t, k)| **k > unread_max && !checked.contains(*t))
            .map(|(t, k)| (*k, t))
            .collect();
        ready.sort_by(|a, b| b.cmp(a));
        for (k, trace) in ready {
            if matched.len() >= limit {
                break;
            }
            checked.insert(trace.clone());
            let mut ok = true;
            for f in &filters {
                if !check.met(&mut blocks, *f, trace).await? {
                    ok = false;
                    break;
                }
            }
            if ok {
                matched.push((k, trace.clone()));
            }
        }
        if matched.len() >= limit {
            break;
        }
    }
    matched.sort_by(|a, b| b.cmp(a));
    matched.truncate(limit);
    Ok(matched.into_iter().map(|(_, t)| t).collect())
}

/// Checks of candidate traces against a search's filter conditions.
struct Filters<'a> {
    q: &'a TraceQuery,
    summaries: &'a [BlockSummary],
    /// Candidates checked one by one, per condition.
    probed: HashMap<Condition, usize>,
    /// Every trace meeting a condition, once it was worth reading all its blocks.
    met_all: HashMap<Condition, HashSet<String>>,
}

impl Filters<'_> {
    /// Whether `trace` has a span in range meeting `condition`.
    async fn met<S: Traces + ?Sized>(
        &mut self,
        blocks: &mut Blocks<'_, S>,
        condition: Condition,
        trace: &str,
    ) -> Result<bool, StoreError> {
        let q = self.q;
        let candidates = self.summaries.iter().filter(|b| condition.block(q, b));
        if !self.met_all.contains_key(&condition) {
            let probed = self.probed.entry(condition).or_default();
            if *probed < PROBED_CANDIDATES {
                *probed += 1;
                let hash = TraceHash::of(trace);
                let ids: Vec<i64> = candidates
                    .filter(|b| hash.in_filter(&b.bloom))
                    .map(|b| b.id)
                    .collect();
                let spans = blocks.get(&ids).await?;
                return Ok(spans
                    .iter()
                    .flat_map(|v| v.iter())
                    .any(|s| s.trace_id == trace && condition.span(q, s)));
            }
            // Many candidates: one pass over every block that may meet it.
            let mut all = HashSet::new();
            let ids: Vec<i64> = candidates.map(|b| b.id).collect();
            for chunk in ids.chunks(BODIES_PER_READ) {
                for block in blocks.store.span_block_bodies(chunk).await? {
                    for s in decode_checked(block) {
                        if condition.span(q, &s) {
                            all.insert(s.trace_id);
                        }
                    }
                }
            }
            self.met_all.insert(condition, all);
        }
        Ok(self.met_all[&condition].contains(trace))
    }
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
        let spans = vec![
            span(1, 1, "catalog", 200),
            failed,
            span(1, 2, "catalog", 100),
        ];
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
        assert!(false_positives < 30, "{false_positives} of 10000");
        // B3's 64-bit ids (upper half zero) spread as well.
        let mut b3 = Bloom::with_capacity(256);
        for i in 0..256u64 {
            b3.insert(&format!("{i:032x}"));
        }
        let bits = b3.into_bytes();
        let fp = (1_000..11_000u64)
            .filter(|i| may_contain(&bits, &format!("{i:032x}")))
            .count();
        assert!(fp < 30, "{fp} of 10000");
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
