-- sentiment_spikes: brand-days whose volume or negative share is anomalous, with the posts that drove them.
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- Answers: "when did something happen to brand X, and which posts drove it?"
-- A day's z-score compares it with the $window days before it (days without posts count as
-- volume 0); a day is a spike when a z-score reaches $threshold. A day is judged once it has
-- 7 days of history (or the whole window, if shorter); a flat history (standard deviation 0)
-- gives no z-score.
-- Parameters: $brand, $date_from, $date_to (days judged, inclusive, UTC; the window may reach
--   before $date_from), $model_version (NULL = the most recently used model),
--   $source, $lang (NULL = every platform / language; else the series of that platform / language only),
--   $window    trailing days (default 28),
--   $threshold z-score that makes a spike (default 3),
--   $min_posts posts a day needs before its negative share can spike (default 5),
--   $top       driving posts listed per spike (default 3): by engagement, posts negative toward the brand
--              first when the negative share spiked.
-- One row per (spike, driving post); the spike's columns repeat on its rows. history_days = the days
-- the z-scores were computed over (the window, or fewer at the start of the data).
WITH settings AS (
    SELECT
        least(coalesce(CAST($window AS INTEGER), 28), 7)  AS min_history,
        coalesce(CAST($threshold AS DOUBLE), 3.0)         AS threshold,
        coalesce(CAST($min_posts AS INTEGER), 5)          AS min_posts,
        coalesce(CAST($top AS INTEGER), 3)                AS top
),
posts AS NOT MATERIALIZED (  -- read twice from the table rather than copied
    SELECT *, coalesce(likes, 0) + coalesce(shares, 0) + coalesce(replies, 0) AS engagement
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
daily AS (
    SELECT brand, day, count(*) AS posts, count(brand_label) AS labelled,
           count(*) FILTER (brand_label = 'negative') / nullif(count(brand_label), 0) AS negative_share  -- of the labelled posts
    FROM posts
    GROUP BY brand, day
),
calendar AS (
    SELECT brand, CAST(unnest(generate_series(min(day), max(day), INTERVAL 1 DAY)) AS DATE) AS day
    FROM daily
    GROUP BY brand
),
series AS (
    SELECT c.brand, c.day, coalesce(d.posts, 0) AS posts, coalesce(d.labelled, 0) AS labelled, d.negative_share
    FROM calendar c LEFT JOIN daily d ON c.brand IS NOT DISTINCT FROM d.brand AND c.day = d.day
),
history AS (
    SELECT
        *,
        count(*) OVER w                 AS history_days,
        avg(posts) OVER w               AS mean_posts,
        stddev_samp(posts) OVER w       AS sd_posts,
        avg(negative_share) OVER w      AS mean_negative_share,
        stddev_samp(negative_share) OVER w AS sd_negative_share
    FROM series
    WINDOW w AS (PARTITION BY brand ORDER BY day
                 ROWS BETWEEN coalesce(CAST($window AS INTEGER), 28) PRECEDING AND 1 PRECEDING)
),
judged AS (
    SELECT
        brand,
        day,
        history_days,
        posts,
        labelled,
        mean_posts,
        (posts - mean_posts) / nullif(sd_posts, 0)                                  AS posts_z,
        negative_share,
        mean_negative_share,
        (negative_share - mean_negative_share) / nullif(sd_negative_share, 0)       AS negative_share_z
    FROM history, settings
    WHERE history_days >= min_history
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
),
spikes AS (
    SELECT
        judged.*,
        coalesce(posts_z >= threshold, false)                                        AS volume_spike,
        coalesce(negative_share_z >= threshold AND labelled >= min_posts, false)     AS negative_spike
    FROM judged, settings
),
drivers AS (
    SELECT
        s.*,
        p.post_id,
        p.brand_label,
        p.brand_p_positive - p.brand_p_negative AS brand_sentiment_score,
        p.engagement,
        p.text,
        row_number() OVER (
            PARTITION BY s.brand, s.day
            ORDER BY (s.negative_spike AND p.brand_label = 'negative') DESC, p.engagement DESC, p.post_id
        ) AS rank
    FROM spikes s JOIN posts p  -- by day, the UTC date: created_at against s.day would be in the session's time zone
      ON s.brand IS NOT DISTINCT FROM p.brand AND p.day = s.day
    WHERE s.volume_spike OR s.negative_spike
)
SELECT
    brand,
    day,
    concat_ws('+', CASE WHEN volume_spike THEN 'volume' END, CASE WHEN negative_spike THEN 'negative_share' END) AS kind,
    history_days,
    posts,
    mean_posts,
    posts_z,
    negative_share,
    mean_negative_share,
    negative_share_z,
    rank,
    post_id,
    brand_label,
    brand_sentiment_score,
    engagement,
    text
FROM drivers, settings
WHERE rank <= top
ORDER BY brand, day, rank;
