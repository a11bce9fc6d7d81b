"""The embedded default dataset: a seeded synthetic short-video log with realistic structure.

World model (all drawn from one `numpy.random.Generator(seed)`):
- Items live in `num_clusters` topics, each split into `subclusters_per_cluster` niches; an item
  has a latent vector (niche centre + noise), a quality, a duration, a creator (mostly from its
  niche) and Zipf-distributed popularity. Its *content* (pseudo-word title, genres, creator,
  length bucket) reveals the topic well and the niche only weakly, so collaborative signal
  carries information content does not -- the reason item embeddings fuse the two.
- Users hold 2-4 niche interests (mostly inside one primary topic) that *drift*: at random points
  in their history one interest is swapped for another niche. Their static profile (age bucket,
  gender, device) is drawn from distributions tied to the primary topic, so it correlates with
  what they watch; region is independent.
- Each event picks an interest (or explores a globally popular item with `explore_prob`), then an
  item of that niche by popularity. Engagement follows the user-item match (cosine of the item
  latent and the user's current taste) plus item quality: completion ratio -> play time, and
  like / follow / comment / share with decreasing base rates.
- Timestamps are strictly increasing per user (gaps >= 1 s), so the chronological split is strict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .dataset import Dataset, Interactions, Items, Users

AGE_BUCKETS = 7
NUM_REGIONS = 12
NUM_DEVICES = 3
LENGTH_EDGES = np.array([15, 30, 60, 120, 300, 600, 1200], dtype=np.float64)  # seconds
BASE_TIME = 1_600_000_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic world (defaults: the whole pipeline in minutes on 2 CPUs)."""
    num_users: int = 2000
    num_items: int = 3000
    num_interactions: int = 100_000
    num_clusters: int = 20
    subclusters_per_cluster: int = 5
    num_genres: int = 18
    latent_dim: int = 16
    zipf_exponent: float = 1.0
    explore_prob: float = 0.1
    drift_per_user: float = 1.5
    min_per_user: int = 5
    seed: int = 0

    def validate(self) -> None:
        for f in ("num_users", "num_items", "num_clusters", "subclusters_per_cluster",
                  "num_genres", "latent_dim", "min_per_user"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"synthetic: {f} must be an integer >= 1, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"synthetic: seed must be an int, got {type(self.seed).__name__}")
        if self.seed < 0:
            raise ValueError(f"synthetic: seed must be >= 0, got {self.seed}")
        if not isinstance(self.num_interactions, (int, np.integer)) \
                or isinstance(self.num_interactions, bool) or self.num_interactions < self.num_users:
            raise ValueError(f"synthetic: num_interactions must be an integer >= num_users "
                             f"({self.num_users}), got {self.num_interactions!r}")
        for f, lo, hi in (("explore_prob", 0.0, 1.0), ("zipf_exponent", 0.0, 5.0),
                          ("drift_per_user", 0.0, 100.0)):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"synthetic: {f} must be a number in [{lo}, {hi}], got {v!r}")


def _pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct pronounceable pseudo-words (2-3 consonant-vowel syllables)."""
    cons = list("bcdfghjklmnprstvz")
    vows = list("aeiou")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        m = 2 * (count - len(out)) + 8
        nsyl = rng.integers(2, 4, size=m)
        c = rng.integers(0, len(cons), size=(m, 3))
        v = rng.integers(0, len(vows), size=(m, 3))
        for i in range(m):
            w = "".join(cons[c[i, j]] + vows[v[i, j]] for j in range(nsyl[i]))
            if w not in seen:
                seen.add(w)
                out.append(w)
                if len(out) == count:
                    break
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def generate_synthetic(config: SyntheticConfig | None = None, **options) -> Dataset:
    """Generate the synthetic dataset; `options` override `SyntheticConfig` fields
    (e.g. `generate_synthetic(num_users=100, seed=3)`). Deterministic for a config."""
    if config is None:
        names = {f.name for f in fields(SyntheticConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"synthetic: unknown option(s) {unknown}; valid options: {sorted(names)}")
        config = SyntheticConfig(**options)
    elif options:
        config = SyntheticConfig(**{**asdict(config), **options})
    config.validate()
    cfg = config
    rng = np.random.default_rng(cfg.seed)
    C, P, G, D = cfg.num_clusters, cfg.subclusters_per_cluster, cfg.num_genres, cfg.latent_dim
    S, I, U, N = C * P, cfg.num_items, cfg.num_users, cfg.num_interactions

    # ---- items: niches, latents, popularity -----------------------------------------------
    cluster_centre = _normalize(rng.standard_normal((C, D)))
    # Noise of per-coordinate scale s / sqrt(D) has norm ~s against unit centres.
    sub_centre = _normalize(np.repeat(cluster_centre, P, axis=0)
                            + 0.6 * rng.standard_normal((S, D)) / np.sqrt(D))
    sub_share = rng.dirichlet(np.full(S, 3.0))
    item_sub = rng.choice(S, size=I, p=sub_share)
    item_cluster = item_sub // P
    item_latent = _normalize(sub_centre[item_sub] + 0.35 * rng.standard_normal((I, D)) / np.sqrt(D))
    item_quality = 0.5 * rng.standard_normal(I)
    pop = 1.0 / np.power(rng.permutation(I) + 1.0, cfg.zipf_exponent)
    cluster_log_len = rng.uniform(np.log(20), np.log(400), size=C)
    duration = np.clip(np.exp(cluster_log_len[item_cluster] + 0.5 * rng.standard_normal(I)), 5, 3600)
    duration = np.round(duration, 1)

    # ---- item content: titles, genres, creator, length bucket ----------------------------
    words_per_cluster, words_per_sub, common = 24, 3, 150
    vocab = _pseudo_words(rng, C * words_per_cluster + S * words_per_sub + common)
    vocab_arr = np.array(vocab, dtype=object)
    cl_words = np.arange(C * words_per_cluster).reshape(C, words_per_cluster)
    sub_words = C * words_per_cluster + np.arange(S * words_per_sub).reshape(S, words_per_sub)
    common_words = C * words_per_cluster + S * words_per_sub + np.arange(common)
    title_len = rng.integers(3, 7, size=I)
    max_len = int(title_len.max())
    source = rng.random((I, max_len))  # < .55 topic word, < .65 niche word, else common word
    w_topic = cl_words[item_cluster[:, None], rng.integers(0, words_per_cluster, (I, max_len))]
    w_sub = sub_words[item_sub[:, None], rng.integers(0, words_per_sub, (I, max_len))]
    w_common = common_words[rng.integers(0, common, (I, max_len))]
    word_idx = np.where(source < 0.55, w_topic, np.where(source < 0.65, w_sub, w_common))
    titles = [" ".join(vocab_arr[word_idx[i, :title_len[i]]]) for i in range(I)]

    primary_genre = rng.integers(0, G, size=C)
    secondary_genre = rng.integers(0, G, size=C)
    genres = np.zeros((I, G), dtype=np.float32)
    rows = np.arange(I)
    genres[rows, primary_genre[item_cluster]] = (rng.random(I) < 0.9)
    sec_mask = rng.random(I) < 0.4
    genres[rows[sec_mask], secondary_genre[item_cluster[sec_mask]]] = 1.0
    rnd_mask = rng.random(I) < 0.1
    genres[rows[rnd_mask], rng.integers(0, G, size=int(rnd_mask.sum()))] = 1.0

    num_creators = max(1, I // 8)
    creator_sub = rng.integers(0, S, size=num_creators)
    creator_sub[: min(S, num_creators)] = rng.permutation(S)[: min(S, num_creators)]
    order = np.argsort(creator_sub, kind="stable")
    sub_creator_start = np.searchsorted(creator_sub[order], np.arange(S + 1))
    n_in_sub = np.diff(sub_creator_start)[item_sub]
    own = (rng.random(I) < 0.8) & (n_in_sub > 0)
    pick = sub_creator_start[item_sub] + (rng.random(I) * np.maximum(n_in_sub, 1)).astype(np.int64)
    creator = np.where(own, order[np.minimum(pick, num_creators - 1)],
                       rng.integers(0, num_creators, size=I))
    length_bucket = np.searchsorted(LENGTH_EDGES, duration)
    items = Items(
        ids=np.arange(I, dtype=np.int64), titles=titles, genres=genres,
        genre_names=[f"genre_{g}" for g in range(G)],
        categorical=np.stack([creator, length_bucket], axis=1).astype(np.int64),
        categorical_names=["creator", "length_bucket"],
        categorical_cardinalities=[num_creators, len(LENGTH_EDGES) + 1],
        cluster=item_cluster.astype(np.int64),
    )

    # ---- users: interests and static profile ---------------------------------------------
    cluster_share = rng.dirichlet(np.full(C, 2.0))
    primary = rng.choice(C, size=U, p=cluster_share)
    k_int = rng.integers(2, 5, size=U)
    K = 4
    same = rng.random((U, K)) < 0.6
    other_cluster = rng.integers(0, C, size=(U, K))
    int_cluster = np.where(same, primary[:, None], other_cluster)
    int_cluster[:, 0] = primary
    interests = int_cluster * P + rng.integers(0, P, size=(U, K))  # (U, K) niche ids
    weights = rng.dirichlet(np.ones(K), size=U) + 1e-3
    weights[np.arange(K)[None, :] >= k_int[:, None]] = 0.0
    weights /= weights.sum(1, keepdims=True)

    age_dist = rng.dirichlet(np.full(AGE_BUCKETS, 0.6), size=C)
    female_p = rng.beta(1.0, 1.0, size=C)
    device_dist = rng.dirichlet(np.full(NUM_DEVICES, 1.0), size=C)
    age_b = (rng.random(U)[:, None] > np.cumsum(age_dist[primary], 1)).sum(1)
    age_b = np.minimum(age_b, AGE_BUCKETS - 1)
    gender = (rng.random(U) < female_p[primary]).astype(np.int64)
    device = np.minimum((rng.random(U)[:, None] > np.cumsum(device_dist[primary], 1)).sum(1),
                        NUM_DEVICES - 1)
    region_p = 1.0 / np.arange(1, NUM_REGIONS + 1)
    region = rng.choice(NUM_REGIONS, size=U, p=region_p / region_p.sum())
    age_years = 13 + 8 * age_b + rng.uniform(0, 8, size=U)
    users = Users(
        ids=np.arange(U, dtype=np.int64),
        features=np.stack([age_b, gender, region, device], axis=1).astype(np.int64),
        feature_names=["age_bucket", "gender", "region", "device"],
        cardinalities=[AGE_BUCKETS, 2, NUM_REGIONS, NUM_DEVICES],
        numeric=((age_years - age_years.mean()) / max(age_years.std(), 1e-6))[:, None]
        .astype(np.float32),
        numeric_names=["age"],
    )

    # ---- events per user (heavy-tailed activity, exact total) ----------------------------
    floor = min(cfg.min_per_user, N // U)
    activity = rng.lognormal(0.0, 0.8, size=U)
    counts = floor + rng.multinomial(N - floor * U, activity / activity.sum())
    offsets = np.r_[0, np.cumsum(counts)]
    ev_user = np.repeat(np.arange(U), counts)
    pos_in_user = np.arange(N) - offsets[ev_user]
    frac = (pos_in_user + 0.5) / counts[ev_user]  # position in the user's history, (0, 1)

    # Drift: per user, a few change points in (0, 1); after each, one interest slot moves to a
    # new niche (same topic half the time). Slot contents per segment are built vectorized over
    # users by applying change c to every user at once.
    n_changes = rng.poisson(cfg.drift_per_user, size=U)
    max_changes = int(n_changes.max()) if U else 0
    change_at = np.sort(rng.random((U, max(max_changes, 1))), axis=1)
    change_at[np.arange(max(max_changes, 1))[None, :] >= n_changes[:, None]] = 2.0  # never
    seg_interests = np.empty((U, max_changes + 1, K), dtype=np.int64)
    seg_interests[:, 0] = interests
    for c in range(max_changes):
        cur = seg_interests[:, c].copy()
        slot = (rng.random(U) * k_int).astype(np.int64)
        old = cur[np.arange(U), slot]
        same_topic = rng.random(U) < 0.5
        new = np.where(same_topic, (old // P) * P + rng.integers(0, P, size=U),
                       rng.integers(0, S, size=U))
        cur[np.arange(U), slot] = new
        seg_interests[:, c + 1] = cur
    ev_seg = (frac[:, None] > change_at[ev_user]).sum(1)
    cum_w = np.cumsum(weights, 1)
    ev_slot = np.minimum((rng.random(N)[:, None] > cum_w[ev_user]).sum(1), K - 1)
    ev_sub = seg_interests[ev_user, ev_seg, ev_slot]
    explore = rng.random(N) < cfg.explore_prob

    # Item draw: by popularity inside the chosen niche (global popularity when exploring or
    # when the niche happens to hold no item at small sizes).
    ev_item = np.empty(N, dtype=np.int64)
    by_sub = np.argsort(item_sub, kind="stable")
    sub_start = np.searchsorted(item_sub[by_sub], np.arange(S + 1))
    pop_sorted = pop[by_sub]
    cum_pop = np.zeros(I + 1)
    np.cumsum(pop_sorted, out=cum_pop[1:])
    lo, hi = sub_start[ev_sub], sub_start[ev_sub + 1]
    empty_sub = hi == lo
    explore |= empty_sub
    u01 = rng.random(N)
    target = cum_pop[lo] + u01 * (cum_pop[hi] - cum_pop[lo])
    local = np.clip(np.searchsorted(cum_pop, target, side="right") - 1, lo, np.maximum(hi - 1, lo))
    ev_item[:] = by_sub[np.minimum(local, I - 1)]
    global_cum = np.cumsum(pop) / pop.sum()
    n_exp = int(explore.sum())
    ev_item[explore] = np.minimum(np.searchsorted(global_cum, rng.random(n_exp), side="right"), I - 1)

    # ---- engagement from the user-item match ---------------------------------------------
    seg_w = weights[ev_user]  # (N, K)
    taste = _normalize(np.einsum("nk,nkd->nd", seg_w,
                                 sub_centre[seg_interests[ev_user, ev_seg]]))
    match = np.einsum("nd,nd->n", taste, item_latent[ev_item])
    affinity = 3.0 * match + item_quality[ev_item] - 1.0 + 0.5 * rng.standard_normal(N)
    p = 1.0 / (1.0 + np.exp(-affinity))
    completion = rng.beta(0.5 + 4.0 * p, 0.5 + 4.0 * (1.0 - p))
    ev_duration = duration[ev_item].astype(np.float32)
    play_time = np.round(ev_duration * completion, 1).astype(np.float32)
    completion = play_time / ev_duration  # derive everything from the logged float32 values
    like = rng.random(N) < 0.6 * p ** 2
    follow = rng.random(N) < 0.08 * p ** 3
    comment = rng.random(N) < 0.05 * p ** 2
    share = rng.random(N) < 0.04 * p ** 2
    engagement = np.clip(0.6 * completion + 0.2 * like + 0.1 * follow + 0.05 * comment
                         + 0.05 * share, 0.0, 1.0)
    positive = (completion >= 0.8) | like | follow | share

    # ---- timestamps: strictly increasing per user ----------------------------------------
    gaps = 1 + np.floor(rng.exponential(3 * 3600.0, size=N)).astype(np.int64)
    csum = np.cumsum(gaps)
    within = csum - np.repeat(csum[offsets[:-1]] - gaps[offsets[:-1]], counts)
    start = BASE_TIME + rng.integers(0, 60 * 86400, size=U)
    timestamp = start[ev_user] + within

    inter = Interactions(
        user=ev_user.astype(np.int64), item=ev_item, timestamp=timestamp.astype(np.int64),
        engagement=engagement.astype(np.float32), positive=positive,
        signals={"play_time": play_time.astype(np.float32),
                 "duration": ev_duration.astype(np.float32),
                 "like": like.astype(np.int8), "follow": follow.astype(np.int8),
                 "comment": comment.astype(np.int8), "share": share.astype(np.int8)},
    )
    return Dataset(name=f"synthetic(seed={cfg.seed})", items=items, users=users, interactions=inter)
