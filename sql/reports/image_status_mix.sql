-- image_status_mix: data quality: per brand, what happened to the posts' images (ok, no image, fetch errors, ...).
-- Answers: "how much of brand X's sentiment was judged without the image?"
-- posts: posts whose summary status is image_status (ok when any of its images was usable; no_image
-- without images; else its first image's failure). images: the images of the brand's posts with
-- that status, each counted once (a post has up to --max-images of them).
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model version), $source, $lang (a platform, a language).
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
      AND image_status IS NOT NULL  -- a post of a language its model does not cover had no image fetched
),
per_post AS (
    SELECT
        brand,
        image_status,
        count(*)            AS posts,
        count(image_label)  AS with_image_label
    FROM posts
    GROUP BY brand, image_status
),
per_image AS (
    SELECT p.brand, i.image_status, count(*) AS images
    FROM posts p JOIN post_images i USING (post_id, model_version)
    GROUP BY p.brand, i.image_status
)
SELECT
    coalesce(per_post.brand, per_image.brand)                                   AS brand,
    coalesce(per_post.image_status, per_image.image_status)                     AS image_status,
    coalesce(per_post.posts, 0)                                                 AS posts,
    coalesce(per_post.posts, 0)
        / sum(coalesce(per_post.posts, 0)) OVER (PARTITION BY coalesce(per_post.brand, per_image.brand))  AS share_of_brand_posts,
    coalesce(per_post.with_image_label, 0)                                      AS with_image_label,
    coalesce(per_image.images, 0)                                               AS images
FROM per_post FULL JOIN per_image
  ON per_post.brand IS NOT DISTINCT FROM per_image.brand AND per_post.image_status = per_image.image_status
ORDER BY brand, posts DESC, images DESC, image_status;
