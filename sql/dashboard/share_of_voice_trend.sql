-- share_of_voice_trend: per day or ISO week, each brand's mentions and their share of all brands' mentions then
-- (untagged posts are no brand's mentions: left out).
-- Answers: "who owns the conversation, and is that changing?" (the dashboard adds a 95% Wilson interval per share)
-- positive / negative mentions count the sentiment toward the brand (brand_label).
-- Parameters (NULL = no filter): $brand (its rows only, 0 in a period of other brands' mentions; shares stay
--   relative to ALL brands),
--   $date_from, $date_to (inclusive days, UTC), $source, $lang, $model_version (required: the
--   version the dashboard resolved), $period ('week' = ISO weeks starting Monday; else days).
WITH counts AS (
    SELECT
        brand,
        CASE WHEN $period = 'week' THEN CAST(date_trunc('week', day) AS DATE) ELSE day END  AS period_start,
        count(*)                                                  AS mentions,
        count(*) FILTER (brand_label = 'positive')                AS positive_mentions,
        count(*) FILTER (brand_label = 'negative')                AS negative_mentions
    FROM post_sentiment
    WHERE model_version = $model_version
      AND brand IS NOT NULL
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR created_at >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR created_at < CAST($date_to AS DATE) + 1)
    GROUP BY ALL
),
periods AS (
    SELECT period_start, CAST(sum(mentions) AS BIGINT) AS all_mentions FROM counts GROUP BY period_start
)
SELECT  -- under a brand filter, a period of other brands' mentions only is that brand's 0, not a gap
    coalesce(c.brand, $brand)                   AS brand,
    p.period_start,
    coalesce(c.mentions, 0)                     AS mentions,
    p.all_mentions,
    coalesce(c.mentions, 0) / p.all_mentions    AS share_of_voice,
    coalesce(c.positive_mentions, 0)            AS positive_mentions,
    coalesce(c.negative_mentions, 0)            AS negative_mentions
FROM periods p LEFT JOIN counts c ON c.period_start = p.period_start AND ($brand IS NULL OR c.brand = $brand)
ORDER BY p.period_start, mentions DESC, brand;
