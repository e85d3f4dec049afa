-- image_status_mix: data quality: per brand, what happened to the posts' images (ok, no image, fetch errors, ...).
-- Answers: "how much of brand X's sentiment was judged without the image?"
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model version), $source, $lang (a platform, a language).
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT arg_max(model_version, scored_at) FROM scored_posts))
      AND ($brand IS NULL OR brand = $brand)
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
)
SELECT
    brand,
    image_status,
    count(*)                                            AS posts,
    count(*) / sum(count(*)) OVER (PARTITION BY brand)  AS share_of_brand_posts,
    count(image_label)                                  AS with_image_label
FROM posts
GROUP BY brand, image_status
ORDER BY brand, posts DESC, image_status;
