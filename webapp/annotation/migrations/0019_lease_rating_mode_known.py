from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0018_lease_rating_mode'),
    ]

    operations = [
        migrations.AddConstraint(
            model_name='lease',
            constraint=models.CheckConstraint(condition=models.Q(('rating_mode__in', ['likert', 'thumbs', 'pairwise', 'ranking', 'rubric'])), name='lease_rating_mode_known'),
        ),
    ]
