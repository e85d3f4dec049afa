-- runs: data quality: every scoring run with its dump, model version, posts in/scored/rejected and time.
-- posts_scored = the posts it labelled (a rerun: none of those an earlier run stored); posts_unscored = the posts it stored without a label (a language the
-- model does not cover, no text and no usable image; for runs recorded before it was counted, those of its
-- posts still stored unlabelled); stored_posts = how many of its posts are still stored (a later run over
-- the same dump and model replaces them); stored_unscored = how many of those have no prediction.
-- Answers: "did last night's run score everything, with which model, and how fast?"
-- Parameters (NULL = no filter): $brand (counts only that brand's stored posts), $date_from,
--   $date_to (inclusive days, UTC, of started_at), $model_version (NULL = every run).
WITH stored AS (
    SELECT run_id, count(*) AS stored_posts, count(unscored_reason) AS stored_unscored
    FROM scored_posts
    WHERE $brand IS NULL OR list_contains(brands, $brand)
    GROUP BY run_id
)
SELECT
    run_id,
    dump,
    model_version,
    started_at,
    finished_at,
    epoch(finished_at - started_at)             AS seconds,
    posts_in,
    posts_scored - coalesce(posts_unscored, stored.stored_unscored, 0) AS posts_scored,
    coalesce(posts_unscored, stored.stored_unscored, 0)                AS posts_unscored,
    posts_rejected,
    posts_rejected / nullif(posts_in, 0)        AS rejected_rate,
    coalesce(stored.stored_posts, 0)            AS stored_posts,
    coalesce(stored.stored_unscored, 0)         AS stored_unscored,
    image_status,
    not_posts,                                  -- records skipped as not posts (likes, comments), by reason
    not_covered                                 -- posts stored unscored: their language is not the model's, by language
FROM runs
LEFT JOIN stored USING (run_id)
WHERE ($model_version IS NULL OR model_version = $model_version)
  AND ($date_from IS NULL OR CAST(started_at AS DATE) >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR CAST(started_at AS DATE) <= CAST($date_to AS DATE))
ORDER BY started_at, run_id;
